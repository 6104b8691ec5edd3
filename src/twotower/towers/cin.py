"""Compressed Interaction Network (xDeepFM's CIN).

Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions" (KDD 2018). Feature
maps ``X^k[h] = sum_{i, j} W^k[h, i, j] (X^{k-1}[i] * X^0[j])`` (element-wise products of field
vectors, vector-wise interactions); each map is sum-pooled over the embedding axis and the pooled
maps of all layers are concatenated, then mapped to the output width.
"""
from __future__ import annotations

import torch
from torch import nn


class CIN(nn.Module):
    """[B, F, E] -> [B, out_dim]."""

    def __init__(self, num_fields: int, layer_sizes: list[int], out_dim: int):
        super().__init__()
        self.layers = nn.ModuleList()
        prev = num_fields
        for h in layer_sizes:
            # a 1x1 convolution over the (prev * F) pairwise products = the W^k tensor
            self.layers.append(nn.Conv1d(prev * num_fields, h, kernel_size=1))
            prev = h
        self.out = nn.Linear(sum(layer_sizes), out_dim)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        b, f, e = x0.shape
        x = x0
        pooled = []
        for conv in self.layers:
            z = torch.einsum("bhe,bme->bhme", x, x0).reshape(b, -1, e)  # [B, H*F, E]
            x = torch.relu(conv(z))  # [B, H_k, E]
            pooled.append(x.sum(dim=-1))
        return self.out(torch.cat(pooled, dim=-1))
