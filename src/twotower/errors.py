"""Errors that speak to the user.

Every problem caused by the user's input (a file, a config, a request) raises a subclass of
``TwoTowerError`` whose message names the file, column, row or field and says what was expected.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class TwoTowerError(Exception):
    """Base class of every error the user can fix."""


class ConfigError(TwoTowerError):
    """The run configuration is invalid (unknown field, wrong type, unknown model name...)."""


class DataError(TwoTowerError):
    """An input file is missing, empty, or has a missing / mistyped column."""


class ArtifactError(TwoTowerError):
    """A run-folder artifact (checkpoint, vocabulary, index) is missing, corrupt or incompatible."""
