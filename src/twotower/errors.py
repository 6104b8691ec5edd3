"""Errors that speak to the user.

Every problem caused by the user's input (a file, a config, a request) raises a subclass of
``TwoTowerError`` whose message names the file, column, row or field and says what was expected.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pydantic import ValidationError


class TwoTowerError(Exception):
    """Base class of every error the user can fix."""


class ConfigError(TwoTowerError):
    """The run configuration is invalid (unknown field, wrong type, unknown model name...)."""


class DataError(TwoTowerError):
    """An input file is missing, empty, or has a missing / mistyped column."""


class ArtifactError(TwoTowerError):
    """A run-folder artifact (checkpoint, vocabulary, index) is missing, corrupt or incompatible."""


def validation_message(err: "ValidationError", source: str, what: str = "configuration",
                       where: Callable[[tuple], str] | None = None,
                       known_fields: Callable[[tuple], list[str]] | None = None) -> str:
    """One way to say what is wrong with a validated mapping (run config, channels, simulator):
    ``{source}: invalid {what}``, then a line ``  field.path: problem`` per problem. An unknown
    field is said so, with the closest name ``known_fields(parent location)`` offers; a wrong
    value is quoted. ``where(location)`` writes a location (default: dotted path)."""
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        loc, msg = tuple(e["loc"]), e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            known = known_fields(loc[:-1]) if known_fields is not None else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        path = where(loc) if where is not None else ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)
