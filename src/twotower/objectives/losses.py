"""Training losses: plain functions of logits, vectorised over the batch.

Every loss takes an optional per-example ``weight[B]`` and returns the weighted mean
``sum(w * loss) / sum(w)`` (0 when every weight is 0) as a scalar of at least float32: fp16 / bf16
logits are upcast before the log-softmax so masked entries and large logits stay finite.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def logq_correct(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Sampling-bias (log-Q) correction: ``logits[B, N] - log_q[None, :]``.

    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019).

    ``log_q[N]`` is the log of each candidate's expected count per batch (see ``negatives``).
    Frequent candidates are sampled as negatives more often than the softmax assumes; subtracting
    ``log q`` undoes that bias. Returns ``Tensor[B, N]`` in the logits' dtype.
    """
    return logits - log_q.to(logits.dtype)[None, :]


def remove_accidental_hits(
    logits: torch.Tensor,
    positive_ids: torch.Tensor,
    candidate_ids: torch.Tensor,
    positive_column: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask candidates that are the row's own positive item: they must not act as negatives.

    logits[B, N]; positive_ids[B]; candidate_ids[N]; positive_column[B] or None: the column
    holding row i's positive, which stays unmasked (None: the positive is not among the
    candidates, so every match is masked). Matches are set to ``finfo(dtype).min / 2``: their
    softmax probability is exactly 0 and no gradient reaches them, and halving keeps
    ``x - max`` inside the dtype's range (finite in fp16 / bf16). Returns a new ``Tensor[B, N]``.
    """
    hits = positive_ids[:, None] == candidate_ids[None, :]
    if positive_column is not None:
        rows = torch.arange(hits.shape[0], device=hits.device)
        hits[rows, positive_column] = False
    return logits.masked_fill(hits, torch.finfo(logits.dtype).min / 2)


def in_batch_softmax(
    logits: torch.Tensor,
    item_ids: torch.Tensor,
    log_q: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    remove_hits: bool = True,
) -> torch.Tensor:
    """In-batch sampled softmax: row i's positive is column i, the other items are negatives.

    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019).

    logits[B, B] query-item scores (``Q @ I.T``); item_ids[B] encoded items of the batch;
    log_q[B] or None: log expected count per batch of each item (``in_batch_candidates``),
    subtracted from every column, the diagonal included, as in the paper; weight[B] or None.
    With ``remove_hits``, columns j != i whose item equals row i's item are masked. Returns the
    weighted mean cross-entropy, a scalar.
    """
    if log_q is not None:
        logits = logq_correct(logits, log_q)
    diagonal = torch.arange(logits.shape[0], device=logits.device)
    if remove_hits:
        logits = remove_accidental_hits(logits, item_ids, item_ids, diagonal)
    return softmax_cross_entropy(logits, diagonal, weight)


def mixed_negative_softmax(
    pos_logits: torch.Tensor,
    batch_logits: torch.Tensor,
    batch_ids: torch.Tensor,
    batch_log_q: torch.Tensor,
    extra_logits: torch.Tensor,
    extra_ids: torch.Tensor,
    extra_log_q: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mixed negative sampling: in-batch items plus extra (uniform) corpus draws as candidates.

    Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations" (WWW 2020).

    pos_logits[B] row i's score with its positive; it replaces the diagonal of
    batch_logits[B, B] (equal to it when ``batch_logits = Q @ I.T``); batch_ids[B],
    batch_log_q[B] the in-batch candidates; extra_logits[B, N'], extra_ids[N'], extra_log_q[N']
    the extra candidates (``UniformSampler.sample``). Each kind is corrected by its own log_q
    (same unit: expected count per batch), the scores are concatenated to ``[B, B + N']``,
    every candidate equal to row i's positive other than column i is masked, and the loss is
    the weighted mean cross-entropy with the positive at column i. With N' = 0 it equals
    ``in_batch_softmax(batch_logits, batch_ids, batch_log_q, weight)``. Returns a scalar.
    """
    batch_logits = torch.diagonal_scatter(batch_logits, pos_logits.to(batch_logits.dtype))
    logits = torch.cat([batch_logits, extra_logits.to(batch_logits.dtype)], dim=1)
    candidate_ids = torch.cat([batch_ids, extra_ids])
    log_q = torch.cat([batch_log_q.to(logits.dtype), extra_log_q.to(logits.dtype)])
    diagonal = torch.arange(logits.shape[0], device=logits.device)
    logits = remove_accidental_hits(logq_correct(logits, log_q), batch_ids, candidate_ids, diagonal)
    return softmax_cross_entropy(logits, diagonal, weight)


def full_softmax(
    pos_logits: torch.Tensor,
    corpus_logits: torch.Tensor,
    pos_ids: torch.Tensor,
    corpus_ids: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact softmax over the whole corpus: every item is a candidate of every row.

    pos_logits[B] row i's score with its positive; corpus_logits[B, N] its scores with every
    corpus item; pos_ids[B], corpus_ids[N] the encoded item ids. The positive is column 0 and its
    own corpus column is masked, so a positive that is missing from the corpus still trains and
    one that is present is counted once: the loss is ``-log softmax`` of the positive over
    {positive} + corpus. No candidate is sampled, so no log-Q correction applies. The weighted
    mean over rows, a scalar.
    """
    corpus_logits = corpus_logits.to(_at_least_float32(pos_logits).dtype)
    own = pos_ids[:, None] == corpus_ids[None, :]  # [B, N]
    corpus_logits = corpus_logits.masked_fill(own, torch.finfo(corpus_logits.dtype).min)
    logits = torch.cat([pos_logits[:, None].to(corpus_logits.dtype), corpus_logits], dim=1)
    return softmax_cross_entropy(logits, torch.zeros_like(pos_ids), weight)


def binary_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Pointwise click / no-click loss: logits[B], labels[B] in {0, 1} (or soft), weight[B].

    Returns the weighted mean of ``BCEWithLogits``, a scalar.
    """
    logits = _at_least_float32(logits)
    losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return _weighted_mean(losses, weight)


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-class cross-entropy: logits[B, C], labels[B] class indices, weight[B].

    Returns the weighted mean over rows, a scalar.
    """
    losses = F.cross_entropy(_at_least_float32(logits), labels, reduction="none")
    return _weighted_mean(losses, weight)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return losses.mean()
    if weight.shape != losses.shape:
        raise ValueError(f"weight must have shape {tuple(losses.shape)}, got {tuple(weight.shape)}")
    weight = weight.to(losses.dtype)
    total = weight.sum()
    # All-zero weights: nothing to learn from this batch, loss 0 (not 0/0 = NaN).
    return (weight * losses).sum() / torch.where(total > 0, total, torch.ones_like(total))


def class_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                       extra_logits: torch.Tensor | None = None, extra_label: int = 0,
                       extra_weight: float = 1.0) -> torch.Tensor:
    """MOBIUS's click / unclick / bad softmax: weighted mean cross-entropy over two row sets.

    Fan et al., "MOBIUS: Towards the Next Generation of Query-Ad Matching in Baidu's Sponsored
    Search" (KDD 2019). logits[B, C] per-class logits of the observed pairs, labels[B] their class
    (click / unclick), weight[B] or None; extra_logits[P, C] or None: the sampled bad cases, all
    of class ``extra_label``, each weighted ``extra_weight``. Returns
    ``(sum w * ce + extra_weight * sum ce_extra) / (sum w + extra_weight * P)``, a scalar.
    """
    ce = F.cross_entropy(_at_least_float32(logits), labels, reduction="none")  # [B]
    w = weight.to(ce.dtype) if weight is not None else torch.ones_like(ce)
    total, count = (ce * w).sum(), w.sum()
    if extra_logits is not None and extra_logits.shape[0]:
        bad = torch.full((extra_logits.shape[0],), extra_label, dtype=torch.long,
                         device=extra_logits.device)
        ce_bad = F.cross_entropy(_at_least_float32(extra_logits), bad, reduction="none")
        total = total + extra_weight * ce_bad.sum()
        count = count + extra_weight * extra_logits.shape[0]
    return total / count.clamp_min(1e-12)


def mimic_loss(augmented: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """DAT's adaptive-mimic loss: mean squared distance of ``augmented`` [B, D] to
    ``stop_gradient(target)`` [B, D] over the rows where ``positive`` [B] (bool) holds; 0 when
    none does. No gradient reaches ``target``.

    Yu et al., "A Dual Augmented Two-tower Model for Online Large-scale Recommendation" (DLP-KDD 2021).
    """
    d = (augmented - target.detach()).pow(2).sum(-1)  # [B]
    pos = positive.to(d.dtype)
    return (d * pos).sum() / pos.sum().clamp_min(1.0)


def category_alignment_loss(vectors: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
    """DAT's category alignment: vectors[B, D], category[B] ids -> the scalar
    sum over minor categories c of ||Cov(major) - Cov(c)||_F^2 / D^2 (vectorised, no loop).

    Yu et al. (DLP-KDD 2021). The major category is the batch's most frequent one; categories with fewer than 2 items have
    no covariance and are skipped."""
    uniq, inv, counts = torch.unique(category, return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        return vectors.new_zeros(())
    x = vectors.float()
    onehot = torch.zeros(len(x), len(uniq), device=x.device, dtype=x.dtype)
    onehot[torch.arange(len(x), device=x.device), inv] = 1.0
    n = counts.to(x.dtype)  # [C]
    mean = (onehot.T @ x) / n[:, None]  # [C, D]
    second = torch.einsum("bc,bd,be->cde", onehot, x, x)  # [C, D, D]
    cov = (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1).clamp_min(1)[:, None, None]
    major = int(torch.argmax(counts))
    valid = counts >= 2
    valid[major] = False
    if counts[major] < 2 or not bool(valid.any()):
        return vectors.new_zeros(())
    diff = (cov[major][None] - cov[valid]).pow(2).sum(dim=(1, 2))
    return diff.sum() / x.shape[1] ** 2
