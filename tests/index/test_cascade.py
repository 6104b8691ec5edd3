"""Ensemble (weighted concatenation) and cascade embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from twotower.errors import ConfigError
from twotower.index.cascade import cascade_rescore, ensemble_vectors


def test_concatenated_inner_product_is_the_weighted_sum_of_both_models_scores():
    rng = np.random.default_rng(0)
    qa, ia = rng.normal(size=(5, 8)), rng.normal(size=(30, 8))
    qb, ib = rng.normal(size=(5, 4)), rng.normal(size=(30, 4))
    for w in (0.0, 0.3, 1.0):
        q, i = ensemble_vectors(qa, qb, w), ensemble_vectors(ia, ib, w)
        assert q.shape == (5, 12)
        assert np.allclose(q @ i.T, w * qa @ ia.T + (1 - w) * qb @ ib.T, atol=1e-4)


def test_cascade_equals_the_strong_models_ranking_restricted_to_the_cheap_models_candidates():
    rng = np.random.default_rng(1)
    q, items = rng.normal(size=(6, 8)), rng.normal(size=(100, 8))
    candidates = np.stack([rng.choice(100, 20, replace=False) for _ in range(6)])
    candidates[0, 15:] = -1
    rows, scores = cascade_rescore(candidates, q, items, 10)
    for r in range(6):
        cand = candidates[r][candidates[r] >= 0]
        s = q[r] @ items[cand].T
        assert rows[r].tolist() == cand[np.argsort(-s, kind="stable")[:10]].tolist()
        assert np.allclose(scores[r], np.sort(s)[::-1][:10], atol=1e-5)
    assert set(rows[0]).isdisjoint({-1})


def test_ensemble_refuses_bad_inputs():
    with pytest.raises(ConfigError, match="weight"):
        ensemble_vectors(np.ones((2, 2)), np.ones((2, 2)), 1.5)
    with pytest.raises(ConfigError, match="rows"):
        ensemble_vectors(np.ones((2, 2)), np.ones((3, 2)), 0.5)
    with pytest.raises(ConfigError, match="vectors per row"):
        ensemble_vectors(np.ones((2, 3, 2)), np.ones((2, 3, 2)), 0.5)
