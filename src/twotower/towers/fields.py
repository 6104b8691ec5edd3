"""Bring a side's field embeddings to one common width, so they can be stacked as [B, F, E].

Field-interaction towers (SENet, FM, CIN, channel attention) treat the fields of a side as a set of
equally-sized vectors; a field whose embedding width differs (a dense feature, an explicit
``embedding_dim``) is mapped by its own linear layer, the others pass through unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class CommonWidth(nn.Module):
    """``forward(list of [B, E_f]) -> [B, F, E]`` with a per-field projection where E_f != E."""

    def __init__(self, dims: list[int], width: int):
        super().__init__()
        self.width = width
        self.proj = nn.ModuleList([nn.Identity() if d == width else nn.Linear(d, width, bias=False)
                                   for d in dims])

    def forward(self, fields: list[torch.Tensor]) -> torch.Tensor:
        if len(fields) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} fields, got {len(fields)}")
        return torch.stack([p(f) for p, f in zip(self.proj, fields)], dim=1)
