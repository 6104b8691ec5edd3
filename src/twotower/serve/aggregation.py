"""ComiRec's controllable aggregation (Cen et al., "Controllable Multi-Interest Framework for
Recommendation", KDD 2020): from the candidates the K interests retrieved (merged), greedily pick
the items maximising Q(u, S) = sum_{i in S} f(u, i) + lambda * sum_{i != j in S} g(i, j),
g = category diversity."""
from __future__ import annotations

import numpy as np


def _diversity(cats: np.ndarray) -> np.ndarray:
    """Pairwise g(i, j) in [0, 1] for one request: [C] category ids -> 1 - [c_i == c_j];
    [C, G] multi-hot genre sets -> Jaccard distance."""
    if cats.ndim == 1:
        return (cats[:, None] != cats[None, :]).astype(np.float64)
    a = cats.astype(np.float64)
    inter = a @ a.T
    union = a.sum(1)[:, None] + a.sum(1)[None, :] - inter
    return np.where(union > 0, 1.0 - inter / np.maximum(union, 1e-12), 0.0)


def controllable_aggregate(scores: np.ndarray, categories: np.ndarray, n: int,
                           lam: float) -> np.ndarray:
    """ComiRec's controllable aggregation (greedy maximisation of Q(u, S)).

    ``scores`` [B, C]: f(u, i) of each merged candidate (max over the interests; -inf = none),
    ``categories`` [B, C] category ids or [B, C, G] multi-hot genres, ``n`` items to return,
    ``lam`` >= 0 the accuracy/diversity trade-off. Returns candidate positions [B, n] in pick
    order (-1 where fewer than n candidates). lam = 0 gives the pure accuracy (score) order.
    Vectorised over the requests; one step per picked item.
    """
    scores = np.asarray(scores, dtype=np.float64)
    b, c = scores.shape
    n = min(n, c)
    cats = np.asarray(categories)
    g = np.stack([_diversity(cats[r]) for r in range(b)]) if b else np.zeros((0, c, c))  # [B, C, C]
    gain = np.zeros((b, c))
    chosen = np.zeros((b, c), dtype=bool)
    out = np.full((b, n), -1, dtype=np.int64)
    rows = np.arange(b)
    available = np.isfinite(scores)
    for step in range(n):
        obj = np.where(available & ~chosen, scores + lam * gain, -np.inf)
        pick = obj.argmax(1)
        ok = np.isfinite(obj[rows, pick])
        out[ok, step] = pick[ok]
        chosen[rows[ok], pick[ok]] = True
        gain[ok] += g[rows[ok], pick[ok]]  # g(i, j) of every candidate with the new pick
    return out
