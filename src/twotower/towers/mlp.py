"""Multi-layer perceptrons used as the top of a tower."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) for every hidden size, then a linear output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
