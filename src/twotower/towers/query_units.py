"""MGDSPR's user tower blocks (Li et al., KDD 2021): the multi-granular semantic unit of a query
and the query-attended behaviour spans fused by self-attention with a [CLS] token.

Query tokens arrive as one hashed token list [B, T] (0 = padding; word and/or char-3-gram ids,
``features`` text kind). Granularities, each a [B, D] vector:
``unigram`` (mean of tanh(token embeddings)), ``bigram`` (mean of tanh(W [e_t; e_t+1]) over
adjacent token pairs), ``sequence`` (mean of a self-attention layer over the tokens), ``history``
(the query attending over the user's past queries, when a query-history feature is given) and
``mix`` (their sum), stacked into Q_mgs [B, G, D].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from twotower.towers.sequence import MultiHeadSelfAttention, masked_mean, masked_softmax


class MultiGranularQuery(nn.Module):
    """Token embeddings [B, T, E] (+ past queries [B, H, E]) -> Q_mgs [B, G, D] and the unit names."""

    def __init__(self, in_dim: int, dim: int, with_history: bool, heads: int = 2):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.bigram = nn.Linear(2 * dim, dim)
        self.sequence = MultiHeadSelfAttention(dim, heads)
        self.history_proj = nn.Linear(in_dim, dim) if with_history else None
        self.names = ["unigram", "bigram", "sequence"] + (["history"] if with_history else []) + ["mix"]

    def units(self, tokens: torch.Tensor, mask: torch.Tensor, history: torch.Tensor | None = None,
              history_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(tokens)  # [B, T, D]
        unigram = masked_mean(torch.tanh(x), mask)
        pair_mask = mask[:, 1:] & mask[:, :-1]
        pairs = torch.tanh(self.bigram(torch.cat([x[:, :-1], x[:, 1:]], -1)))  # [B, T-1, D]
        # a one-token query has no pair: its bigram unit is its unigram unit
        bigram = torch.where(pair_mask.any(1, keepdim=True), masked_mean(pairs, pair_mask), unigram)
        sequence = masked_mean(torch.tanh(self.sequence(x, mask)), mask)
        out = [unigram, bigram, sequence]
        if self.history_proj is not None:
            if history is None or history_mask is None:
                raise ValueError("MultiGranularQuery built with a history unit needs the past queries")
            h = torch.tanh(self.history_proj(history))  # [B, H, D]
            w = masked_softmax(torch.einsum("bd,bhd->bh", unigram, h) / math.sqrt(h.shape[-1]), history_mask)
            out.append(torch.einsum("bh,bhd->bd", w, h))
        out.append(torch.stack(out, 0).sum(0))  # mix
        return torch.stack(out, 1)  # [B, G, D]


class QueryAttendedSpans(nn.Module):
    """Each behaviour span (real-time, short-term, long-term, ...) is self-attended, then read by
    every granularity of the query: H_span = softmax(Q_mgs S^T / sqrt(D)) S -> [B, G, D]; spans a
    user has no behaviour in give zeros."""

    def __init__(self, dim: int, spans: int, heads: int = 2):
        super().__init__()
        self.encoders = nn.ModuleList(MultiHeadSelfAttention(dim, heads) for _ in range(spans))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, q_mgs: torch.Tensor, spans: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        out = []
        for enc, (s, m) in zip(self.encoders, spans):
            s = enc(s, m)
            w = masked_softmax(q_mgs @ s.transpose(1, 2) * self.scale, m.unsqueeze(1))  # [B, G, L]
            out.append(w @ s)
        return out


class ClsFusion(nn.Module):
    """Self-attention over [[CLS], tokens...]; the [CLS] output is the fused user-query vector."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        self.attn = MultiHeadSelfAttention(dim, heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, S, D] -> [B, D]."""
        x = torch.cat([self.cls.expand(tokens.shape[0], 1, -1), tokens], 1)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.attn(x, mask)[:, 0]

