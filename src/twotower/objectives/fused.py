"""Fused in-batch softmax: scores, log-Q correction, accidental-hit removal and cross-entropy in
one autograd node over a single ``[B, B]`` buffer.

The plain path (``model.logits`` -> ``logq_correct`` -> ``remove_accidental_hits`` ->
``softmax_cross_entropy``) allocates and re-reads a ``[B, B]`` tensor at every step, forward and
backward; on a CPU that memory traffic, not the matrix product, bounds the training speed. Here
the buffer is written once by the matrix product (with the log-Q term as its bias), masked and
turned into ``exp(logit - row max)`` in place, and that is what backward reuses for the softmax
gradient: one ``exp`` per step, no second ``[B, B]`` allocation. ``tests/objectives`` checks that
loss and gradients equal the plain path's.
"""
from __future__ import annotations

import torch


def duplicate_positions(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every off-diagonal pair of batch rows holding the same item.

    Vectorised without a ``[B, B]`` (or ``[R, R]``) comparison: one sort groups equal ids, and
    the pairs are enumerated group by group, so the work is proportional to the number of pairs.
    """
    b = item_ids.shape[0]
    empty = item_ids.new_zeros(0, dtype=torch.long)
    if b < 2:
        return empty, empty
    sorted_ids, order = torch.sort(item_ids.reshape(-1), stable=True)
    new = torch.ones(b, dtype=torch.bool, device=item_ids.device)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]  # first sorted position of each distinct id
    group = new.cumsum(0) - 1  # [B] group of each sorted position
    starts = torch.nonzero(new).squeeze(1)  # [G]
    ends = torch.cat([starts[1:], starts.new_tensor([b])])
    size = (ends - starts)[group]  # [B] group size at each sorted position
    pos = torch.nonzero(size > 1).squeeze(1)  # [R] sorted positions whose id repeats
    if pos.numel() == 0:
        return empty, empty
    reps = size[pos]  # each pairs with every member of its group (itself dropped below)
    row_pos = pos.repeat_interleave(reps)  # [P + R]
    first = (reps.cumsum(0) - reps).repeat_interleave(reps)
    col_pos = starts[group[row_pos]] + torch.arange(row_pos.numel(), device=pos.device) - first
    off = row_pos != col_pos
    return order[row_pos[off]], order[col_pos[off]]


class _FusedInBatchSoftmax(torch.autograd.Function):
    # float32 inside, whatever autocast says outside: the buffer is reused by backward
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, q, i, log_q, weight, hit_rows, hit_cols):
        # [B, B], the only [B, B] allocation; the log-Q correction rides in as the bias
        logits = q @ i.T if log_q is None else torch.addmm(log_q.neg()[None, :], q, i.T)
        if hit_rows.numel():
            logits[hit_rows, hit_cols] = float("-inf")
        positive = logits.diagonal().clone()  # [B]
        top = logits.amax(dim=1, keepdim=True)  # [B, 1]
        probs = logits.sub_(top).exp_()  # exp(logit - row max), unnormalised, in place
        total = probs.sum(dim=1)  # [B]
        per_row = top.squeeze(1) + total.log() - positive  # logsumexp - positive logit
        w = weight / weight.sum().clamp_min(1e-12) if weight is not None else None
        loss = (per_row * w).sum() if w is not None else per_row.mean()
        ctx.save_for_backward(q, i, probs, total, w)
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        q, i, probs, total, w = ctx.saved_tensors
        b = probs.shape[0]
        # d loss / d logits = (softmax - onehot) * row weight, computed in the saved buffer
        scale = w * grad_out if w is not None else (grad_out / b).expand(b)  # [B]
        grad = probs.mul_((scale / total)[:, None])
        grad.diagonal().sub_(scale)
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
