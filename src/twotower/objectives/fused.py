"""Fused in-batch softmax: scores, log-Q correction, accidental-hit removal and cross-entropy in
one autograd node over a single ``[B, B]`` buffer.

The plain path (``model.logits`` -> ``logq_correct`` -> ``remove_accidental_hits`` ->
``softmax_cross_entropy``) allocates and re-reads a ``[B, B]`` tensor at every step, forward and
backward; on a CPU that memory traffic, not the matrix product, bounds the training speed. Here
the buffer is written once by the matrix product, corrected and masked in place, and reused for
the softmax gradient, so a step moves about a third of the bytes. ``tests/objectives`` checks that
loss and gradients equal the plain path's.
"""
from __future__ import annotations

import torch


def duplicate_positions(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every off-diagonal pair of batch rows holding the same item.

    Vectorised without a ``[B, B]`` comparison: only rows whose item occurs more than once
    are compared, and in a shuffled batch those are few.
    """
    _, inverse, counts = torch.unique(item_ids, return_inverse=True, return_counts=True)
    dup_rows = torch.nonzero(counts[inverse] > 1).squeeze(1)  # [R]
    if dup_rows.numel() == 0:
        empty = item_ids.new_zeros(0, dtype=torch.long)
        return empty, empty
    same = inverse[dup_rows][:, None] == inverse[dup_rows][None, :]  # [R, R]
    same.fill_diagonal_(False)
    r, c = torch.nonzero(same, as_tuple=True)
    return dup_rows[r], dup_rows[c]


class _FusedInBatchSoftmax(torch.autograd.Function):
    # float32 inside, whatever autocast says outside: the buffer is reused by backward
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, q, i, log_q, weight, hit_rows, hit_cols):
        logits = q @ i.T  # [B, B], the only [B, B] allocation
        if log_q is not None:
            logits.sub_(log_q[None, :])
        if hit_rows.numel():
            logits[hit_rows, hit_cols] = float("-inf")
        lse = torch.logsumexp(logits, dim=1)  # [B]
        per_row = lse - logits.diagonal()
        w = weight / weight.sum().clamp_min(1e-12) if weight is not None else None
        loss = (per_row * w).sum() if w is not None else per_row.mean()
        ctx.save_for_backward(q, i, logits, lse, w)
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        q, i, logits, lse, w = ctx.saved_tensors
        b = logits.shape[0]
        # d loss / d logits = (softmax - onehot) * row weight, computed in the saved buffer
        grad = logits.sub_(lse[:, None]).exp_()
        grad.diagonal().sub_(1.0)
        scale = (w * grad_out)[:, None] if w is not None else grad_out / b
        grad.mul_(scale)
        return grad @ i, grad.T @ q, None, None, None, None


def fused_in_batch_softmax(q: torch.Tensor, i: torch.Tensor, item_ids: torch.Tensor,
                           log_q: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                           remove_hits: bool = True) -> torch.Tensor:
    """Weighted mean in-batch softmax cross-entropy of ``q[B, D] @ i[B, D].T`` — equal, in value
    and gradients, to ``in_batch_softmax(q @ i.T, item_ids, log_q, weight, remove_hits)``.

    Fold the temperature into ``q`` before calling (``q / temperature``). Computed in float32.
    """
    q, i = q.float(), i.float()
    if remove_hits:
        hit_rows, hit_cols = duplicate_positions(item_ids)
    else:
        hit_rows = hit_cols = item_ids.new_zeros(0, dtype=torch.long)
    return _FusedInBatchSoftmax.apply(q, i, None if log_q is None else log_q.float(),
                                      None if weight is None else weight.float(),
                                      hit_rows, hit_cols)
