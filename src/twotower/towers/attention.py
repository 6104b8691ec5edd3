"""Self-attention blocks over a behaviour sequence: AttRec's short-term self-attention and a
causal (SASRec-style) transformer encoder whose last valid position is the user's next-item state.

Sequences are [B, L, D] with a padding mask bool[B, L]; histories are left-aligned (oldest first,
padding after the last valid item), as ``features.padding.pad_ragged`` writes them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twotower.towers.sequence import NEG


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """The transformer's timing signal [L, D] (sin on even, cos on odd dimensions)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


def last_items(x: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` most recent ids of left-aligned histories [B, L] -> [B, n] (left-aligned, 0 = padding)."""
    length = (x > 0).sum(1, keepdim=True)
    n = min(n, x.shape[1])
    start = (length - n).clamp_min(0)
    pos = torch.arange(n, device=x.device).unsqueeze(0)
    out = x.gather(1, (start + pos).clamp_max(x.shape[1] - 1))
    return out.masked_fill(pos >= torch.clamp(length, max=n), 0)


class ShortTermSelfAttention(nn.Module):
    """AttRec's short-term intent (Zhang et al., 2018): the L most recent items X (+ a timing
    signal) attend to each other with ReLU query/key maps, s = softmax(ReLU(X W_Q) ReLU(X W_K)^T
    / sqrt(D)) with the diagonal masked (an item matching itself says nothing), and the outputs
    s X are averaged into the short-term vector m."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.register_buffer("timing", sinusoidal_positions(max_len, dim), persistent=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D], [B, L] -> m [B, D] (zeros for an empty sequence)."""
        length = x.shape[1]
        xt = x + self.timing[:length]
        s = torch.relu(self.w_q(xt)) @ torch.relu(self.w_k(xt)).transpose(1, 2) * self.scale  # [B, L, L]
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        keys = mask.unsqueeze(1) & ~eye
        keys = keys | (eye & (keys.sum(-1, keepdim=True) == 0))  # a lone item attends to itself
        a = torch.softmax(s.masked_fill(~keys, NEG), -1) @ x  # [B, L, D]
        m = mask.unsqueeze(-1).to(x.dtype)
        return (a * m).sum(1) / m.sum(1).clamp_min(1.0)


class _PreNormBlock(nn.Module):
    """x + MHA(LN(x)) then + FFN(LN(.)); queries may be a subset of the key positions."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D]; attn_mask bool (True = may attend) [L, L] or [B, 1, 1, L] when ``last``
        [B] picks one query position per row -> [B, L, D] or [B, 1, D]."""
        b, length, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        if last is not None:  # only the last valid position's output is needed
            rows = torch.arange(b, device=x.device)
            q, x = q[rows, last].unsqueeze(1), x[rows, last].unsqueeze(1)
        split = lambda t: t.reshape(b, -1, h, d // h).transpose(1, 2)  # noqa: E731  [B, H, L, D/H]
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.out(a.transpose(1, 2).reshape(b, -1, d))
        return x + self.ffn(self.norm2(x))


class CausalEncoder(nn.Module):
    """A SASRec-style encoder (Kang & McAuley, ICDM 2018): learned positions, ``blocks`` pre-norm
    transformer blocks with causal attention, the output at the last valid position = the state
    that predicts the next item. The last block computes that one position only (its other
    outputs would be thrown away): the same state for about half the last block's work."""

    def __init__(self, dim: int, max_len: int, blocks: int = 2, heads: int = 2, dropout: float = 0.0):
        super().__init__()
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_PreNormBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.ones(max_len, max_len, dtype=torch.bool).tril(),
                             persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D], [B, L] -> [B, D]: the state after the last valid item (zeros when none)."""
        length = x.shape[1]
        h = x + self.position.weight[:length]
        # padding is only after the last valid item, so the causal mask alone keeps it out of
        # every valid position's attention
        causal = self.causal[:length, :length]
        for block in self.blocks[:-1]:
            h = block(h, causal)
        last = (mask.sum(1) - 1).clamp_min(0)
        keys = (torch.arange(length, device=x.device) <= last.unsqueeze(1))[:, None, None, :]
        out = self.norm(self.blocks[-1](h, keys, last)[:, 0])
        return out * mask.any(1, keepdim=True).to(out.dtype)
