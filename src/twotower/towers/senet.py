"""Squeeze-and-excitation over the fields of a tower (field-wise re-weighting).

Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018), applied to feature fields as in FiBiNET
(Huang et al., RecSys 2019) and the SENet two-tower model: each field's embedding is *squeezed*
to one scalar (its mean), a two-layer bottleneck *excites* the F scalars into F field weights, and
every field embedding is multiplied by its weight before the tower's MLP.

Weights: ``gate="sigmoid"`` (the SE paper) gives each weight in (0, 1) independently;
``gate="softmax"`` gives weights that are positive and sum to F (mean 1), i.e. a redistribution of
attention across fields that keeps the overall scale.
"""
from __future__ import annotations

import torch
from torch import nn


class FieldSqueezeExcitation(nn.Module):
    """``forward(list of F tensors [B, E_f]) -> (re-weighted list, weights [B, F])``."""

    def __init__(self, num_fields: int, reduction: float = 2.0, gate: str = "sigmoid"):
        super().__init__()
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"gate must be 'sigmoid' or 'softmax', got {gate!r}")
        hidden = max(1, int(round(num_fields / reduction)))
        self.num_fields = num_fields
        self.gate = gate
        self.excite = nn.Sequential(nn.Linear(num_fields, hidden), nn.ReLU(),
                                    nn.Linear(hidden, num_fields))

    def weights(self, fields: list[torch.Tensor]) -> torch.Tensor:
        """Field weights [B, F] (squeeze: mean of each field's embedding; excite: bottleneck)."""
        z = torch.stack([f.mean(dim=-1) for f in fields], dim=1)  # [B, F]
        a = self.excite(z)
        if self.gate == "sigmoid":
            return torch.sigmoid(a)
        return torch.softmax(a, dim=-1) * self.num_fields

    def forward(self, fields: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        w = self.weights(fields)  # [B, F]
        return [f * w[:, j:j + 1] for j, f in enumerate(fields)], w
