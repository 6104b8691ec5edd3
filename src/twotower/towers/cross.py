"""Cross network (DCN): explicit bounded-degree feature crosses.

Wang et al., "Deep & Cross Network for Ad Click Predictions" (ADKDD 2017):
``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l`` — each layer raises the polynomial degree by one at a
cost of 2 * d parameters.
"""
from __future__ import annotations

import torch
from torch import nn


class CrossNetwork(nn.Module):
    """[B, d] -> [B, d] through ``layers`` cross layers."""

    def __init__(self, dim: int, layers: int = 2):
        super().__init__()
        self.w = nn.Parameter(torch.randn(layers, dim) * (1.0 / dim ** 0.5))
        self.b = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.w.shape[0]):
            x = x0 * (x @ self.w[layer]).unsqueeze(-1) + self.b[layer] + x
        return x
