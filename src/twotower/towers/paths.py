"""Log-sum-exp over paths: score[b, n] = log sum_l exp(<q_bl, i_n>) (PDN's user -> trigger -> item
paths, one query vector per trigger), computed in row chunks.

The plain form materialises [B, L, N] scores three times (product, log-sum-exp, its backward) and
lays them out for a reduction over a strided axis; ``path_logsumexp`` streams chunks of query rows
through cache-sized [b, L, N] blocks, keeps only the [B, N] result and recomputes each block in the
backward pass (one extra matrix product instead of the stored block). Same values and gradients
as ``path_logsumexp_reference``.
"""
from __future__ import annotations

import torch


class _PathLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, i: torch.Tensor, chunk: int) -> torch.Tensor:
        b = q.shape[0]
        out = q.new_empty(b, i.shape[0])
        it = i.T.contiguous()
        for s in range(0, b, chunk):
            out[s:s + chunk] = torch.logsumexp(q[s:s + chunk] @ it, 1)  # [c, L, N] -> [c, N]
        ctx.save_for_backward(q, i, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, i, out = ctx.saved_tensors
        chunk = ctx.chunk
        gq = torch.empty_like(q)
        gi = torch.zeros_like(i)
        it = i.T.contiguous()
        n, d = i.shape
        for s in range(0, q.shape[0], chunk):
            qc = q[s:s + chunk]
            # d out[b, n] / d score[b, l, n] = softmax over l, times the incoming gradient
            w = torch.exp(qc @ it - out[s:s + chunk].unsqueeze(1)) * grad[s:s + chunk].unsqueeze(1)
            gq[s:s + chunk] = w @ i  # [c, L, D]
            gi += w.reshape(-1, n).T @ qc.reshape(-1, d)  # [N, D]
        return gq, gi, None


def path_logsumexp(q: torch.Tensor, i: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """q [B, L, D], i [N, D] -> [B, N] = logsumexp_l <q_bl, i_n> (chunked, recomputing backward)."""
    return _PathLogSumExp.apply(q, i, chunk)


def path_logsumexp_reference(q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(torch.einsum("bld,nd->bnl", q, i), -1)
