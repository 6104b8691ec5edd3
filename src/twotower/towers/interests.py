"""Multi-interest extractors with a per-user number of active interests: Octopus' elastic
archives and SINE's sparse concept activation.

Both take per-position behaviour vectors ``h`` [B, L, D] and the padding mask bool[B, L] and return
interest vectors [B, K, D] with the interests a user does not have zeroed (``active`` bool[B, K]),
the convention ``models.mind.MultiInterestModel`` scores and serves.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from twotower.towers.sequence import masked_softmax


class ElasticArchives(nn.Module):
    """Octopus' elastic archive network (Liu et al., SIGIR 2020): M global archives (learned keys);
    each behaviour is filed into the archives by p(m | t) = softmax_m(<h_t, a_m> / sqrt(D)); an
    archive is one of the user's interests when it holds at least ``min_share`` of the user's
    behaviours (and at least half a behaviour's mass, so soft filing does not split one item
    over several archives), so the number of interests grows
    with how varied the sequence is, not with a fixed K; the heaviest archive is always active.
    Interest m = the p-weighted mean of the behaviours filed into archive m."""

    def __init__(self, dim: int, num_archives: int, min_share: float = 0.1):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(num_archives, dim) / math.sqrt(dim))
        self.min_share = min_share
        self.scale = 1.0 / math.sqrt(dim)

    def filing(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """p(m | t) [B, L, M]: each valid behaviour's distribution over the archives (0 at padding)."""
        p = torch.softmax(torch.einsum("bld,md->blm", h, self.keys) * self.scale, -1)
        return p * mask.unsqueeze(-1).to(p.dtype)

    def active(self, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """bool[B, M]: archives holding >= max(0.5, min_share * n_u) behaviours' mass, plus the heaviest."""
        mass = p.sum(1)  # [B, M]
        n = mask.sum(1, keepdim=True).to(mass.dtype)
        need = torch.clamp(self.min_share * n, min=0.5)
        heaviest = torch.zeros_like(mass, dtype=torch.bool).scatter_(1, mass.argmax(1, keepdim=True), True)
        return (mass >= need) | heaviest

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, L, D], mask bool[B, L] -> (interests [B, M, D], active bool[B, M])."""
        p = self.filing(h, mask)
        mass = p.sum(1).clamp_min(1e-9)  # [B, M]
        interests = torch.einsum("blm,bld->bmd", p, h) / mass.unsqueeze(-1)
        active = self.active(p, mask)
        return interests * active.unsqueeze(-1).to(h.dtype), active


class _AdditiveAttention(nn.Module):
    """softmax_L(W2 tanh(W1 x_t)) over the valid positions, one distribution per output head."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, heads, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D], [B, L] -> weights [B, heads, L]."""
        return masked_softmax(self.w2(torch.tanh(self.w1(x))).transpose(1, 2), mask.unsqueeze(1))


class SparseInterests(nn.Module):
    """SINE's sparse-interest module (Tan et al., WSDM 2021).

    A pool of P concept prototypes C; per sequence only the top-K concepts by <C, z_u> are
    activated (z_u = an attentive summary of the sequence), each scaled by sigmoid of its score:
    C^u = C[idx] * sigmoid(s[idx]). Intention assignment P(k | t) = softmax_k(<LN(x_t W), LN(C^u_k)>),
    attention weighting P(t | k) = softmax_t(W_k2 tanh(W_k1 x_t)), interest
    phi_k = LN(sum_t P(k | t) P(t | k) x_t). The interest-aggregation module predicts the next
    intention from the sequence: X^ = P(. | t) C^u, C_apt = LN(attentive pooling of X^),
    e_k = softmax_k(<C_apt, phi_k> / tau), v_u = sum_k e_k phi_k (the next-item vector).
    Concepts outside the top K take no part in any output (and get no gradient) for that sequence.
    """

    def __init__(self, dim: int, pool_size: int, active: int, max_len: int,
                 aggregation_temperature: float = 0.1):
        super().__init__()
        if active > pool_size:
            raise ValueError(f"SINE: {active} active concepts > concept pool of {pool_size}")
        self.k, self.tau = active, aggregation_temperature
        self.pool = nn.Parameter(torch.randn(pool_size, dim) / math.sqrt(dim))
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        hidden = dim  # W1 in R^{D x D}, as the paper's self-attentive summaries
        self.summary = _AdditiveAttention(dim, 1, hidden)
        self.assign = nn.Linear(dim, dim, bias=False)
        self.norm_x, self.norm_c, self.norm_out, self.norm_apt = (nn.LayerNorm(dim) for _ in range(4))
        self.weighting = _AdditiveAttention(dim, active, hidden)
        self.intention = _AdditiveAttention(dim, 1, hidden)

    def select(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices of the active concepts [B, K], activated prototypes C^u [B, K, D])."""
        z = (self.summary(x, mask) @ x).squeeze(1)  # [B, D]
        s = z @ self.pool.T  # [B, P]
        top, idx = s.topk(self.k, dim=1)
        return idx, self.pool[idx] * torch.sigmoid(top).unsqueeze(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D], mask bool[B, L] -> (interests phi [B, K, D], next-item vector v_u [B, D])."""
        x = x + self.position[: x.shape[1]]
        _, c = self.select(x, mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        p_k_t = torch.softmax(self.norm_x(self.assign(x)) @ self.norm_c(c).transpose(1, 2), -1) * m  # [B, L, K]
        p_t_k = self.weighting(x, mask)  # [B, K, L]
        phi = self.norm_out((p_t_k * p_k_t.transpose(1, 2)) @ x)  # [B, K, D]
        intent = p_k_t @ c  # [B, L, D]: each position's intention as a mix of the active concepts
        apt = self.norm_apt((self.intention(intent, mask) @ intent).squeeze(1))  # [B, D]
        e = torch.softmax(torch.einsum("bkd,bd->bk", phi, apt) / self.tau, -1)
        return phi, torch.einsum("bk,bkd->bd", e, phi)
