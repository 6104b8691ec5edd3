"""Cascade and ensemble embeddings: two models' retrieval combined (Facebook EBR, KDD 2020, §6).

* ``ensemble_vectors`` — weighted concatenation: ``[sqrt(w) a, sqrt(1-w) b]`` on both sides, so
  one inner product is ``w * score_a + (1 - w) * score_b`` and one index serves both models
  (the paper's "weighted concatenation" ensemble); the ANN search is unchanged.
* ``cascade_rescore`` — a cheap model's top-N candidates re-scored by a stronger model and cut to
  the top K (the paper's cascade: the second model only ever scores N items per query).

Both take the models' retrieval vectors: query ``[R, D]`` and item ``[N, D]`` of one vector each.
"""
from __future__ import annotations

import math

import numpy as np

from twotower.errors import ConfigError


def _single(vectors: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 3:
        if v.shape[1] != 1:
            raise ConfigError(f"ensemble: {what} has {v.shape[1]} vectors per row; weighted "
                              "concatenation needs one (multi-interest models: use the cascade)")
        v = v[:, 0]
    if v.ndim != 2:
        raise ConfigError(f"ensemble: {what} must be [rows, dim], got shape {v.shape}")
    return v


def ensemble_vectors(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """``[sqrt(weight) * first, sqrt(1 - weight) * second]`` row by row: ``[R, D1 + D2]``.

    Apply it to the query vectors and to the item vectors of the same two models: the inner
    product of the results is ``weight * <qa, ia> + (1 - weight) * <qb, ib>``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"ensemble weight must be in [0, 1], got {weight}")
    a, b = _single(first, "the first model's vectors"), _single(second, "the second model's vectors")
    if len(a) != len(b):
        raise ConfigError(f"ensemble: the two models give {len(a)} and {len(b)} rows; encode the "
                          "same queries / items with both")
    return np.concatenate([math.sqrt(weight) * a, math.sqrt(1.0 - weight) * b], axis=1)


def cascade_rescore(candidates: np.ndarray, query: np.ndarray, items: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidates with a second model and keep its top ``k``.

    candidates[R, N]: item rows from the first model (-1 = none); query[R, D] / items[M, D]: the
    second model's vectors. Returns ``(rows[R, k], scores[R, k])`` best first (-1 / -inf past the
    candidates). Cost: R x N inner products, never R x M.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    q, it = _single(query, "query vectors"), _single(items, "item vectors")
    valid = cand >= 0
    scores = np.einsum("rd,rnd->rn", q, it[np.where(valid, cand, 0)])
    scores = np.where(valid, scores, -np.inf)
    k = min(k, cand.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, 1)
    rows = np.where(np.isfinite(top_scores), np.take_along_axis(cand, order, 1), -1)
    return rows, top_scores
