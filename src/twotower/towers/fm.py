"""Factorisation-machine tower: the side's field vectors summed.

Rendle, "Factorization Machines" (ICDM 2010). The FM cross terms between a query field f and an
item field g are <v_f, v_g>; their sum over all (f, g) pairs is <sum_f v_f, sum_g v_g>, so an FM
restricted to query x item interactions is exactly a two-tower inner product of the summed field
vectors. ``FMTower`` returns that sum (optionally followed by a linear map to the output width).
"""
from __future__ import annotations

import torch
from torch import nn


class FMTower(nn.Module):
    """[B, F, E] -> [B, E] (or [B, out_dim] when ``out_dim`` is given)."""

    def __init__(self, width: int, out_dim: int | None = None):
        super().__init__()
        self.out = nn.Identity() if out_dim in (None, width) else nn.Linear(width, out_dim, bias=False)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.out(stacked.sum(dim=1))
