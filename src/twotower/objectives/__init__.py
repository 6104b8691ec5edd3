"""Training objectives: frequency estimation, negative candidates and losses of logits."""
from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.losses import (
    binary_cross_entropy,
    in_batch_softmax,
    logq_correct,
    mixed_negative_softmax,
    remove_accidental_hits,
    softmax_cross_entropy,
)
from twotower.objectives.negatives import UniformSampler, in_batch_candidates

__all__ = [
    "FrequencyEstimator",
    "UniformSampler",
    "binary_cross_entropy",
    "in_batch_candidates",
    "in_batch_softmax",
    "logq_correct",
    "mixed_negative_softmax",
    "remove_accidental_hits",
    "softmax_cross_entropy",
]
