"""Sequence blocks: per-position behaviour embeddings, masked attention pooling, multi-head
self-attention, self-attentive multi-interest extraction and MIND's label-aware attention.

Histories arrive as LongTensor[B, L] with 0 = padding (``features.padding.pad_ragged`` keeps
the most recent ``max_len`` items, oldest first). Every block takes that padding mask into account.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twotower.towers.embedding import FieldEmbedding

NEG = -1e9


def embed_sequence(emb: FieldEmbedding, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position embeddings of a sequence feature: ([B, L, E], mask bool[B, L])."""
    weight = emb.tables[emb.schema[name].table].weight
    return F.embedding(x, weight, padding_idx=0), x > 0


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked-out positions; an all-masked row gives all zeros."""
    s = scores.masked_fill(~mask, NEG)
    w = torch.softmax(s, dim=dim)
    return w * mask.to(w.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, E], [B, L] -> [B, E] (zeros for an empty row)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class AttentionPooling(nn.Module):
    """Pools a sequence with a query vector: softmax_l(<W q, k_l> / sqrt(D)) over valid positions.
    SDM's "user attention" (the user profile attends over the session / long-term behaviours)."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.proj = nn.Linear(query_dim, key_dim, bias=False)
        self.scale = 1.0 / math.sqrt(key_dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("be,ble->bl", self.proj(query), keys) * self.scale
        w = masked_softmax(s, mask)
        return torch.einsum("bl,ble->be", w, keys)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over valid positions with a residual connection and layer norm."""

    def __init__(self, dim: int, heads: int = 2, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # rows with no valid position attend to their first slot (their output is masked later)
        pad = ~mask
        pad[:, 0] &= mask.any(1)
        out, _ = self.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        return self.norm(x + out) * mask.unsqueeze(-1).to(x.dtype)


class SelfAttentiveInterests(nn.Module):
    """ComiRec-SA's multi-interest extractor (Cen et al., KDD 2020, after Lin et al. 2017):
    A = softmax_L(W2 tanh(W1 H^T)) in R^{K x L}, interests V = A H (+ trainable positions)."""

    def __init__(self, dim: int, num_interests: int, max_len: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 4 * dim
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.position, std=0.02)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, num_interests, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D], [B, L] -> [B, K, D]."""
        x = h + self.position[: h.shape[1]]
        a = self.w2(torch.tanh(self.w1(x)))  # [B, L, K]
        a = masked_softmax(a.transpose(1, 2), mask.unsqueeze(1))  # [B, K, L]
        return a @ h


def label_aware_weights(scores: torch.Tensor, valid: torch.Tensor, power: float,
                        hard: bool = False) -> torch.Tensor:
    """Attention weights over the interests from scores [..., K] (valid bool, broadcastable)."""
    m = valid.expand_as(scores)
    if hard or math.isinf(power):
        pick = scores.masked_fill(~m, NEG).argmax(-1)
        return F.one_hot(pick, scores.shape[-1]).to(scores.dtype)
    return masked_softmax(power * scores, m)


def label_aware_logits(interests: torch.Tensor, items: torch.Tensor, power: float,
                       hard: bool = False, valid: torch.Tensor | None = None) -> torch.Tensor:
    """<label_aware_attention(...), e_n> for every (b, n) -> [B, N], without the [B, N, D] tensor:
    sum_k w_bnk <v_bk, e_n>.

    Batched as one [B*K, D] x [D, N] product laid out [B, K, N] (the reduction over K runs along
    contiguous rows); the hard case (p -> inf) is the best valid interest's score (``amax``, whose
    gradient reaches that interest only, as the one-hot weights do) — no [B, N, K] one-hot, no
    permuted copy. Same values and gradients as ``label_aware_logits_reference``."""
    b, k, d = interests.shape
    s = (interests.reshape(b * k, d) @ items.T).view(b, k, -1)  # [B, K, N]
    if valid is None:
        if hard or math.isinf(power):
            return s.amax(1)
        return (torch.softmax(power * s, 1) * s).sum(1)
    if hard or math.isinf(power):
        # a row without any valid interest scores with its first one (as argmax over all-NEG does)
        valid = valid | ((torch.arange(k, device=valid.device) == 0) & ~valid.any(1, keepdim=True))
        # in place: the product's output is not needed by its backward
        return s.masked_fill_(~valid.unsqueeze(-1), NEG).amax(1)
    return _SoftLabelAware.apply(s, valid.unsqueeze(-1), float(power))  # none valid: 0


class _SoftLabelAware(torch.autograd.Function):
    """sum_k w_k s_k with w = masked softmax_k(p s) over [B, K, N] scores, with the closed-form
    gradient d/ds_j = w_j (1 + p (s_j - out)): two [B, K, N] buffers instead of autograd's many."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, m: torch.Tensor, p: float) -> torch.Tensor:
        w = torch.softmax((s * p).masked_fill_(~m, NEG), 1).mul_(m)  # all-masked rows -> 0
        out = (w * s).sum(1)
        ctx.save_for_backward(s, w, out)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, w, out = ctx.saved_tensors
        g = (s - out.unsqueeze(1)).mul_(ctx.p).add_(1.0).mul_(w).mul_(grad.unsqueeze(1))
        return g, None, None


def label_aware_logits_reference(interests: torch.Tensor, items: torch.Tensor, power: float,
                                 hard: bool = False, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The plain form of ``label_aware_logits``: [B, N, K] scores, weights, weighted sum."""
    s = torch.einsum("bkd,nd->bnk", interests, items)
    if valid is None:
        valid = torch.ones(interests.shape[:2], dtype=torch.bool, device=interests.device)
    return (label_aware_weights(s, valid.unsqueeze(1), power, hard) * s).sum(-1)


def label_aware_attention(interests: torch.Tensor, items: torch.Tensor, power: float,
                          hard: bool = False, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MIND's label-aware attention (Li et al., CIKM 2019) for every (query, item) pair.

    interests [B, K, D], items [N, D] -> user vectors [B, N, D] = sum_k w_bnk v_bk with
    w_bn = softmax_k(p * <v_bk, e_n>), i.e. attention proportional to exp(<v, e>)^p. p = 0 averages
    the interests; p -> inf (or ``hard``) picks the interest closest to the item (ComiRec's argmax).
    ``valid`` bool[B, K] masks interests a short history does not have.
    """
    s = torch.einsum("bkd,nd->bnk", interests, items)  # [B, N, K]
    if valid is None:
        valid = torch.ones(interests.shape[:2], dtype=torch.bool, device=interests.device)
    m = valid.unsqueeze(1).expand_as(s)
    if hard or math.isinf(power):
        pick = s.masked_fill(~m, NEG).argmax(-1)  # [B, N]
        w = F.one_hot(pick, s.shape[-1]).to(interests.dtype)
    else:
        w = masked_softmax(power * s, m)
    return torch.einsum("bnk,bkd->bnd", w, interests)
