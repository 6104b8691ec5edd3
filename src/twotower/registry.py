"""Registries by name that import nothing, so any stage (and the config) can consult them.

``models`` maps ``model.name`` to (model class, its config class); the model modules fill it with
``twotower.models.register``. The config validates ``model:`` against the registered config
class, yet must not import the models (that closed a circle through every model file): on the
first lookup of an unknown name the built-in model package is loaded once by name, as a plugin
entry point would be, and the lookup retried.
"""
from __future__ import annotations

import importlib
from typing import Any

#: model name -> (model class, config class)
models: dict[str, tuple[type, type]] = {}

#: packages whose import registers the built-in models (loaded on the first unknown name)
BUILTIN_MODELS = "twotower.models"
_builtins_loaded = False


def add(table: dict[str, Any], name: str, entry: Any, what: str) -> None:
    """Register ``entry`` under ``name``; registering a different entry twice is an error."""
    if name in table and table[name] != entry:
        raise ValueError(f"{what} {name!r} registered twice")
    table[name] = entry


def model_entry(name: str) -> tuple[type, type] | None:
    """(model class, config class) of ``name``, or None when no model has that name."""
    global _builtins_loaded
    if name not in models and not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module(BUILTIN_MODELS)
    return models.get(name)


def model_names() -> list[str]:
    model_entry("")  # make sure the built-ins are there
    return sorted(models)
