"""Capsule dynamic routing for multi-interest extraction.

MIND's behaviour-to-interest (B2I) routing (Li et al., CIKM 2019): one bilinear map S shared by
all behaviours, fixed random initial routing logits, a fixed number of iterations and the squash
non-linearity; the number of interests K_u = max(1, min(K, log2 |history|)) grows with the
history length (the others are masked). ComiRec-DR (Cen et al., KDD 2020) is the variant with
one map per interest and zero-initialised routing logits.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from twotower.towers.sequence import masked_softmax


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """||z||^2 / (1 + ||z||^2) * z / ||z||: keeps the direction, maps the norm into [0, 1)."""
    n2 = (z * z).sum(-1, keepdim=True)
    return n2 / (1.0 + n2) * z / torch.sqrt(n2 + eps)


def dynamic_interest_count(mask: torch.Tensor, max_interests: int) -> torch.Tensor:
    """MIND's K_u = max(1, min(K, floor(log2(n_u)))) per row -> bool[B, K] of valid interests."""
    n = mask.sum(1).clamp_min(1).to(torch.float32)
    k = torch.clamp(torch.floor(torch.log2(n)), 1, max_interests).long()
    return torch.arange(max_interests, device=mask.device).unsqueeze(0) < k.unsqueeze(1)


class CapsuleRouting(nn.Module):
    """Behaviour capsules [B, L, E] -> interest capsules [B, K, D] by dynamic routing."""

    def __init__(self, in_dim: int, out_dim: int, num_interests: int, iterations: int = 3,
                 shared_map: bool = True, max_len: int = 50, seed: int = 0):
        super().__init__()
        self.k, self.iterations, self.shared = num_interests, iterations, shared_map
        if shared_map:
            self.map = nn.Parameter(torch.empty(in_dim, out_dim))
        else:
            self.map = nn.Parameter(torch.empty(num_interests, in_dim, out_dim))
        nn.init.normal_(self.map, std=1.0 / math.sqrt(in_dim))
        # MIND: routing logits start from a fixed normal draw (a shared map with equal initial
        # logits would make every interest identical); ComiRec-DR starts from zeros.
        g = torch.Generator().manual_seed(seed)
        init = torch.randn(num_interests, max_len, generator=g) if shared_map else torch.zeros(num_interests, max_len)
        self.register_buffer("init_logits", init, persistent=False)

    def forward(self, e: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None,
                iterations: int | None = None) -> torch.Tensor:
        """e [B, L, E], mask bool[B, L], valid bool[B, K] (interests kept) -> [B, K, D]."""
        b, length, _ = e.shape
        if self.shared:
            u_hat = e @ self.map  # [B, L, D]: one prediction per behaviour, shared by all interests
        else:
            u_hat = torch.einsum("ble,ked->bkld", e, self.map)  # [B, K, L, D]
        if length > self.init_logits.shape[1]:
            raise ValueError(f"sequence length {length} > capsule max_len {self.init_logits.shape[1]}")
        logits = self.init_logits[:, :length].unsqueeze(0).expand(b, -1, -1)  # [B, K, L]
        if valid is None:
            valid = torch.ones(b, self.k, dtype=torch.bool, device=e.device)
        route_mask = valid.unsqueeze(2) & mask.unsqueeze(1)  # [B, K, L]
        u_detached = u_hat.detach()
        iters = self.iterations if iterations is None else iterations
        caps = None
        for it in range(iters):
            # each behaviour distributes itself over the interests (softmax over K)
            w = masked_softmax(logits, route_mask, dim=1)
            last = it == iters - 1
            u = u_hat if last else u_detached
            z = w @ u if self.shared else torch.einsum("bkl,bkld->bkd", w, u)
            caps = squash(z)
            if not last:
                agree = (caps @ u_detached.transpose(1, 2) if self.shared
                         else torch.einsum("bkd,bkld->bkl", caps, u_detached))
                logits = logits + agree
        assert caps is not None
        return caps * valid.unsqueeze(-1).to(caps.dtype)
