"""Models by name. Importing this package registers every built-in model."""
from twotower.models.base import (TwoTowerModel, build_model, model_config_class, register,
                                  registered_models)
from twotower.models import dssm  # noqa: F401  (registers "dssm")

__all__ = ["TwoTowerModel", "build_model", "model_config_class", "register", "registered_models"]
