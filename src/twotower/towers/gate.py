"""SDM's fusion gate (Lv et al., CIKM 2019): G = sigmoid(W1 e_u + W2 s + W3 p + b),
o = (1 - G) * p + G * s — element-wise, how much of the short-term interest s to keep against
the long-term interest p, given the user profile e_u."""
from __future__ import annotations

import torch
from torch import nn


class FusionGate(nn.Module):
    def __init__(self, user_dim: int, dim: int):
        super().__init__()
        self.w_user = nn.Linear(user_dim, dim, bias=True)
        self.w_short = nn.Linear(dim, dim, bias=False)
        self.w_long = nn.Linear(dim, dim, bias=False)

    def gate(self, user: torch.Tensor, short: torch.Tensor, long: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w_user(user) + self.w_short(short) + self.w_long(long))

    def forward(self, user: torch.Tensor, short: torch.Tensor, long: torch.Tensor) -> torch.Tensor:
        g = self.gate(user, short, long)
        return (1 - g) * long + g * short
