"""Metric-learning scores served by an inner-product index.

A (weighted) negative squared Euclidean distance between a query and an item, each made of P
parts, is an inner product of augmented vectors:
-sum_p w_p ||a_p - b_p||^2 = <[2 w_1 a_1, .., 2 w_P a_P, -sum_p w_p ||a_p||^2, 1],
                              [b_1, .., b_P, 1, -sum_p w_p ||b_p||^2]>,
so a distance-trained model (AttRec) is exported, indexed and served as plain MIPS.
"""
from __future__ import annotations

import torch


def clip_norm(x: torch.Tensor, max_norm: float = 1.0) -> torch.Tensor:
    """Scale rows with a norm above ``max_norm`` back onto the ball (AttRec keeps its embeddings
    in the unit ball); rows inside are unchanged."""
    n = x.norm(dim=-1, keepdim=True)
    return x * torch.clamp(max_norm / n.clamp_min(1e-12), max=1.0)


def distance_query(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Query parts [B, D_p] -> [B, sum D_p + 2] (see the module docstring)."""
    sq = sum(w * (a * a).sum(-1) for a, w in zip(parts, weights))
    return torch.cat([2 * w * a for a, w in zip(parts, weights)]
                     + [-sq.unsqueeze(-1), torch.ones_like(sq).unsqueeze(-1)], -1)


def distance_item(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Item parts [N, D_p] -> [N, sum D_p + 2]; <distance_query(a), distance_item(b)> =
    -sum_p w_p ||a_p - b_p||^2."""
    sq = sum(w * (b * b).sum(-1) for b, w in zip(parts, weights))
    return torch.cat(list(parts) + [torch.ones_like(sq).unsqueeze(-1), -sq.unsqueeze(-1)], -1)
