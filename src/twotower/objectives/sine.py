"""SINE's concept regularisation (Tan et al., "Sparse-Interest Network for Sequential
Recommendation", WSDM 2021), added beside the objective's loss."""
from __future__ import annotations

import torch
from torch import nn

from twotower.objectives.auxiliary import register_auxiliary
from twotower.types import Batch


def concept_covariance_penalty(pool: torch.Tensor) -> torch.Tensor:
    """pool[P, D] concept prototypes -> 0.5 * the squared off-diagonal entries of their [D, D]
    covariance, summed: a scalar that decorrelates the concept dimensions."""
    c = pool - pool.mean(0, keepdim=True)
    cov = c.T @ c / c.shape[0]  # [D, D]
    return 0.5 * ((cov ** 2).sum() - (torch.diagonal(cov) ** 2).sum())


@register_auxiliary("sine")
def sine_auxiliary_loss(model: nn.Module, q: torch.Tensor, i: torch.Tensor, batch: Batch,
                        temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    if model.cfg.concept_regularization == 0:
        return q.new_zeros(()), {}
    penalty = concept_covariance_penalty(model.sparse.pool)
    return model.cfg.concept_regularization * penalty, {"concept_cov": float(penalty.detach())}
