"""Models by name. Importing this package registers every model module in it: a new variant is
one file with a ``@register("name")`` class (and its test), nothing else to edit."""
import importlib
import pkgutil

from twotower.models.base import (TwoTowerModel, build_model, model_config_class, register,
                                  registered_models)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["TwoTowerModel", "build_model", "model_config_class", "register", "registered_models"]
