"""Fusion blocks: attention over channels (Que2Search) and a logistic-regression score fusion.

* ``ChannelAttention`` — Liu et al., "Que2Search: Fast and Accurate Query and Document
  Understanding for Search at Facebook" (KDD 2021): the vectors of a tower's channels are fused by
  attention, ``a = softmax_c(w^T tanh(W h_c))``, ``out = sum_c a_c h_c``; the weights of every
  example sum to 1 over its channels.
* ``LogisticFusion`` — the parallel two-tower model (Tencent): K match scores are combined by a
  learned linear layer ``sum_k w_k s_k + b`` (a logistic regression on the scores).
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """``forward(h [B, C, D]) -> (fused [B, D], weights [B, C])``; weights sum to 1 per row."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.score(torch.tanh(self.proj(h))).squeeze(-1), dim=-1)  # [B, C]

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights(h)
        return (w.unsqueeze(-1) * h).sum(dim=1), w


class LogisticFusion(nn.Module):
    """``forward(scores [..., K]) -> [...]``: a learned weighted sum of K scores plus a bias."""

    def __init__(self, k: int, init: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.full((k,), 1.0 / k if init is None else init))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores @ self.weight + self.bias
