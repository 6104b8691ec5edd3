"""Models by name. Importing this package registers every built-in model."""
from twotower.models.base import (TwoTowerModel, build_model, model_config_class, register,
                                  registered_models)
from twotower.models import dssm  # noqa: F401  (registers "dssm")
from twotower.models import youtubednn, mind, comirec, sdm, pdn  # noqa: F401,E402  (zoo II)
from twotower.models import dat, parallel, que2search, resnet, senet  # noqa: F401  (model zoo I)
from twotower.models import mobius  # noqa: F401  (registers "mobius")
from twotower.models import attrec, mgdspr, octopus, sasrec, sine  # noqa: F401,E402  (zoo III)

__all__ = ["TwoTowerModel", "build_model", "model_config_class", "register", "registered_models"]
