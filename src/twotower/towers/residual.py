"""Residual MLP: skip connections carry the low-level input up to the top layer.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), as used by the ResNet-style
two-tower model: an input projection to a fixed width, ``depth`` blocks
``x <- x + W2 relu(W1 LayerNorm(x))`` (pre-activation), and an output projection. With
``skip=False`` the same layers run without the identity paths (a plain deep MLP), which is how a
test shows that the skip path changes the output and carries gradient to the input.
"""
from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(self.norm(x)))))

    def forward(self, x: torch.Tensor, skip: bool = True) -> torch.Tensor:
        return x + self.branch(x) if skip else self.branch(x)


class ResidualMLP(nn.Module):
    """[B, in_dim] -> [B, out_dim] through ``depth`` residual blocks of ``width``."""

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, dropout: float = 0.0,
                 skip: bool = True):
        super().__init__()
        self.skip = skip
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList([ResidualBlock(width, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, self.skip)
        return self.out(torch.relu(self.norm(h)))
