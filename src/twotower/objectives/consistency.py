"""Losses that make retrieval agree with the later stages of the funnel.

* ``distillation_loss`` — Tencent's DMTL ("Distillation based Multi-task Learning", Zhao et al.,
  2021): a multi-task ranker's CTR x engagement scores over the candidates become soft labels
  for the two-tower, a listwise cross-entropy between temperature-scaled distributions.
* ``request_softmax`` — Alibaba's learning of the ranker's order (LDM): in the ranking-stage log,
  the items shown for a request are positives and the items auctioned for the same request but
  not shown are its negatives; each shown item's softmax runs over itself and exactly those.

Both are plain functions of scores, with the usual optional per-row weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from twotower.objectives.losses import _weighted_mean, softmax_cross_entropy


def distillation_loss(student_logits: torch.Tensor, teacher_scores: torch.Tensor,
                      temperature: float = 1.0, mask: torch.Tensor | None = None,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy from the teacher's distribution to the student's, row by row.

    student_logits[B, N]: the two-tower's scores of each query against N candidates (in-batch or
    sampled); teacher_scores[B, N]: the ranker's scores of the same pairs (log-space, e.g.
    ``log(ctr) + log(engagement)``); both divided by ``temperature``; mask[B, N] (False: not a
    candidate of that row). ``sum_j p_teacher(j) * -log p_student(j)``, which differs from
    ``KL(p_teacher || p_student)`` by the teacher's entropy, a constant of the student, so both
    have the same gradients. Returns the weighted mean over rows (scalar, float32 at least).
    """
    s = student_logits.float() / temperature
    t = teacher_scores.float() / temperature
    if mask is not None:
        floor = torch.finfo(s.dtype).min / 2
        s, t = s.masked_fill(~mask, floor), t.masked_fill(~mask, floor)
    target = F.softmax(t, dim=1).detach()
    per_row = -(target * F.log_softmax(s, dim=1)).sum(1)  # [B]
    return _weighted_mean(per_row, weight)


def request_softmax(scores: torch.Tensor, request: torch.Tensor, shown: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """LDM's loss: every shown item against the auctioned-but-not-shown items of its request.

    scores[M]: the two-tower's score of each candidate row of the ranking log; request[M]: its
    request (any integer ids); shown[M] bool. For a shown row s of request r the loss is
    ``-log(exp(x_s) / (exp(x_s) + sum over not-shown n of r of exp(x_n)))`` — the negatives are
    exactly r's not-shown candidates, never another request's. Vectorised: one log-sum-exp of
    the not-shown scores per request (segment reduction), no loop over requests. A request with
    no not-shown candidate contributes a loss of 0 for its shown rows. ``weight[M]`` weighs the
    shown rows. Returns the weighted mean over shown rows (0 when none).
    """
    x = scores.float()
    _, req = torch.unique(request, return_inverse=True)  # dense request index [M]
    r = int(req.max()) + 1 if len(req) else 0
    neg = ~shown
    floor = torch.finfo(x.dtype).min / 2
    neg_scores = x.masked_fill(~neg, floor)
    peak = torch.full((r,), floor, device=x.device).scatter_reduce(0, req, neg_scores, "amax")
    total = torch.zeros(r, device=x.device).index_add_(0, req, torch.exp(neg_scores - peak[req]) * neg)
    has_neg = total > 0
    lse_neg = torch.where(has_neg, peak + torch.log(total.clamp_min(1e-30)), torch.full_like(peak, floor))
    pos = x[shown]
    pos_lse = lse_neg[req[shown]]
    per_row = torch.logaddexp(pos, pos_lse) - pos  # -log softmax of the shown item, [S]
    per_row = torch.where(has_neg[req[shown]], per_row, torch.zeros_like(per_row))
    if per_row.numel() == 0:
        return x.sum() * 0
    return _weighted_mean(per_row, None if weight is None else weight[shown])


def soft_in_batch_labels(logits: torch.Tensor, teacher_scores: torch.Tensor, hard_weight: float,
                         temperature: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """DMTL's full objective on an in-batch ``[B, B]`` score matrix: the hard-label softmax
    (diagonal = positive) mixed with the distillation term, ``hard_weight`` on the former."""
    hard = softmax_cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device), weight)
    soft = distillation_loss(logits, teacher_scores, temperature, weight=weight)
    return hard_weight * hard + (1 - hard_weight) * soft
