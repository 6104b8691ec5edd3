"""Training objectives: tasks by objective name, losses of logits, negatives, the frequency
estimator and the auxiliary losses of model variants. Importing this package loads every module in
it, so a variant's loss file (``@register_auxiliary``) needs no other edit."""
import importlib
import pkgutil

from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.losses import (
    binary_cross_entropy,
    category_alignment_loss,
    class_softmax_loss,
    in_batch_softmax,
    logq_correct,
    mimic_loss,
    mixed_negative_softmax,
    remove_accidental_hits,
    softmax_cross_entropy,
)
from twotower.objectives.negatives import UniformSampler, in_batch_candidates

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "FrequencyEstimator",
    "UniformSampler",
    "binary_cross_entropy",
    "category_alignment_loss",
    "class_softmax_loss",
    "in_batch_candidates",
    "in_batch_softmax",
    "logq_correct",
    "mimic_loss",
    "mixed_negative_softmax",
    "remove_accidental_hits",
    "softmax_cross_entropy",
]
