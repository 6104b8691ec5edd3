"""Two-stage BRW (MOBIUS v2, after Fan et al., "MOBIUS", KDD 2019): the index's ANN takes the top
N by the model's own score, then those N are ranked exactly by cos(click) x w^alpha, the ones
above the model's relevance floor first.

Folding the weight into the vectors (``index.weights.fold_weights``) lets a high bid lift an ad
the model scores as barely relevant into the top; here the weight only reorders ads the model
already retrieved, and with ``retrieval: click_minus_bad`` an ad whose p(bad) / p(click) =
exp((cos_bad - cos_click) / T) exceeds ``floor`` ranks after every ad that passes.

Storage: each item vector is stored unweighted (normalised as the contract says) with w^alpha
appended as one more coordinate; queries get a 0 there, so the ANN's inner product is the model's
score and the weight of a candidate is read back from its stored vector (``reconstruct``), with
no second file to keep in step with the index.
"""
from __future__ import annotations

import math

import numpy as np

from twotower.errors import ConfigError, DataError

#: index kinds whose stored vectors decode exactly enough to read the weight coordinate back
EXACT_KINDS = ("flat", "hnsw", "ivf-flat")


def two_stage_settings(contract: dict, kind: str, n: int, floor: float | None) -> dict:
    """The manifest's ``two_stage`` entry, checked: N candidates, the contract's ``brw_alpha``
    and temperature, and whether the vectors are MOBIUS's [click, bad] halves."""
    if kind not in EXACT_KINDS:
        raise ConfigError(f"--brw two-stage reads each candidate's weight back from the index: "
                          f"kind {kind!r} stores vectors lossily; use one of {', '.join(EXACT_KINDS)}")
    if n < 1:
        raise ConfigError(f"--brw-n must be >= 1 (got {n})")
    halves = contract.get("retrieval") == "click_minus_bad"
    if floor is not None and not halves:
        raise ConfigError("--brw-floor needs a MOBIUS run with model.retrieval: click_minus_bad "
                          "(the floor is p(bad) / p(click), read from the bad vectors)")
    if floor is not None and not floor > 0:
        raise ConfigError(f"--brw-floor must be > 0 (got {floor})")
    return {"n": int(n), "alpha": float(contract.get("brw_alpha", 1.0)), "floor": floor,
            "temperature": float(contract.get("temperature", 1.0)), "halves": halves}


def stored_vectors(vectors: np.ndarray, weights: np.ndarray, normalize: bool) -> np.ndarray:
    """[N, D + 1]: the (normalised) item vectors with their weight (already tempered) appended."""
    x = np.asarray(vectors, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    if len(w) != len(x):
        raise DataError(f"{len(w)} weights for {len(x)} item vectors")
    return np.ascontiguousarray(np.hstack([x, w]), dtype=np.float32)


def pad_queries(q: np.ndarray) -> np.ndarray:
    """Queries [Q, D] -> [Q, D + 1] with 0 at the weight coordinate."""
    return np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))


def _cos(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[Q, D] x [Q, N, D] -> [Q, N] cosines (0 for a zero vector)."""
    qn = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.einsum("qd,qnd->qn", qn, xn)


def rerank(q: np.ndarray, labels: np.ndarray, candidates: np.ndarray, k: int, settings: dict
           ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], labels [Q, k]): stage 2 over the ANN's candidates.

    ``q`` [Q, D] unpadded queries, ``labels`` [Q, N] (-1: none), ``candidates`` [Q, N, D + 1] their
    stored vectors. Score = cos(click) x w^alpha; with a floor, the candidates whose
    p(bad) / p(click) exceeds it rank after all others (their scores are still cos x w)."""
    x, w = candidates[..., :-1], candidates[..., -1]
    if settings["halves"]:
        h = q.shape[1] // 2  # q = [c_q, -b_q], x = [c_a, b_a]
        cos_click = _cos(q[:, :h], x[..., :h])
        cos_bad = _cos(-q[:, h:], x[..., h:])
    else:
        cos_click, cos_bad = _cos(q, x), None
    score = (cos_click * w).astype(np.float32)
    passes = np.ones(score.shape, dtype=bool)
    if settings["floor"] is not None and cos_bad is not None:
        passes = (cos_bad - cos_click) / settings["temperature"] <= math.log(settings["floor"])
    valid = labels >= 0
    # sort key: valid before invalid, passing before failing, then by score
    group = np.where(valid, np.where(passes, 2, 1), 0)
    order = np.lexsort((-score, -group), axis=-1)[:, :k]
    rows = np.arange(len(q))[:, None]
    out_labels = np.where(valid[rows, order], labels[rows, order], -1)
    out_scores = np.where(valid[rows, order], score[rows, order], -np.inf).astype(np.float32)
    return out_scores, out_labels
