"""Metrics on hand-built ranks, pessimistic ties, exclusions, chunked ranking vs a reference."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from twotower.config import FeatureConfig
from twotower.eval.metrics import ranking_metrics
from twotower.eval.offline import build_requests, rank_targets
from twotower.features.dataset import build_corpus
from twotower.features.feature_set import FeatureSet


def test_metrics_on_hand_built_ranks():
    # request 0: targets at ranks 0 and 3; request 1: rank 7; request 2: rank 1
    ranks = np.array([0, 3, 7, 1])
    req = np.array([0, 0, 1, 2])
    m = ranking_metrics(ranks, req, 3, [2, 5], topk=np.array([[0, 1], [1, 2], [1, 0]]), n_items=10)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["recall@5"] == pytest.approx((1.0 + 0 + 1) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    ndcg0 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    ndcg2 = (1 / math.log2(3)) / 1.0
    assert m["ndcg@5"] == pytest.approx((ndcg0 + 0 + ndcg2) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 8 + 1 / 2) / 3)
    assert m["coverage@2"] == pytest.approx(3 / 10)
    assert m["requests"] == 3


def csr(lists):
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    vals = np.array([v for x in lists for v in x], dtype=np.int64)
    return indptr, vals


def test_constant_scorer_gets_zero():
    q = torch.ones(4, 3)
    items = torch.ones(20, 3)
    ranks, req, _ = rank_targets(q, items, csr([[0], [5], [19], [7]]), csr([[], [], [], []]), 5)
    assert (ranks == 19).all()
    m = ranking_metrics(ranks, req, 4, [10])
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0


def test_excluded_items_are_removed():
    q = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[3.0, 0], [2.0, 0], [1.0, 0], [0.5, 0]])
    ranks, _, topk = rank_targets(q, items, csr([[2]]), csr([[]]), top_k=2)
    assert ranks.tolist() == [2]
    ranks, _, topk = rank_targets(q, items, csr([[2]]), csr([[0, 1]]), top_k=2)
    assert ranks.tolist() == [0]
    assert topk[0, 0] == 2


def reference_ranks(qv, iv, targets, exclude):
    out = []
    for r in range(qv.shape[0]):
        s = (qv[r] @ iv.T).max(0)
        ex = exclude[1][exclude[0][r]:exclude[0][r + 1]]
        s[ex] = -np.inf
        for t in targets[1][targets[0][r]:targets[0][r + 1]]:
            out.append(int((s > s[t]).sum() + (s == s[t]).sum() - 1))
    return np.array(out)


@pytest.mark.parametrize("v", [1, 3])
def test_chunked_rank_targets_equal_reference(v):
    rng = np.random.default_rng(1)
    r, n, d = 37, 60, 8
    qv = torch.from_numpy(rng.standard_normal((r, v, d)).astype(np.float32))
    iv = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    iv[10] = iv[11]  # a tie
    tl = [sorted(rng.choice(n, rng.integers(1, 4), replace=False).tolist()) for _ in range(r)]
    el = [sorted(set(rng.choice(n, rng.integers(0, 6), replace=False).tolist()) - set(t))
          for t in tl]
    targets, exclude = csr(tl), csr(el)
    expected = reference_ranks(qv.numpy(), iv.numpy(), targets, exclude)
    for chunk in (1, 5, 1024):
        ranks, req, _ = rank_targets(qv, iv, targets, exclude, top_k=5, chunk_size=chunk)
        np.testing.assert_array_equal(ranks, expected)
        np.testing.assert_array_equal(req, np.repeat(np.arange(r), [len(t) for t in tl]))


@pytest.fixture
def fitted():
    fs = FeatureSet([FeatureConfig(name="user_id", side="query"),
                     FeatureConfig(name="item_id", side="item")], "item_id")
    train = pa.table({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 12, 13]})
    fs.fit([train])
    corpus = build_corpus([train], fs)
    return fs, corpus, train


def test_requests_exclude_training_items_but_never_the_target(fitted):
    fs, corpus, train = fitted
    pos = {v: i for i, v in enumerate(corpus.ids.to_pylist())}
    seen = (train["user_id"].to_numpy(), train["item_id"])
    # user 1's target is 10, which they also saw in training: still ranked
    test = pa.table({"user_id": [1, 2], "item_id": [10, 13]})
    req = build_requests(test, fs, corpus, group_by="user_id", seen=seen, seen_by="user_id")
    assert len(req) == 2
    t_indptr, t_pos = req.targets
    e_indptr, e_pos = req.exclude
    assert t_pos[t_indptr[0]:t_indptr[1]].tolist() == [pos[10]]
    assert sorted(e_pos[e_indptr[0]:e_indptr[1]].tolist()) == [pos[11]]  # 10 kept: it is the target
    assert sorted(e_pos[e_indptr[1]:e_indptr[2]].tolist()) == sorted([pos[10], pos[12]])


def test_unknown_target_ids_are_counted_not_crashed(fitted):
    fs, corpus, _ = fitted
    test = pa.table({"user_id": [1, 2, 3], "item_id": [10, 999, 998]})
    req = build_requests(test, fs, corpus)
    assert req.unknown_targets == 2
    assert len(req) == 1  # requests without a known target are dropped
    q = torch.randn(len(req), 4)
    ranks, _, _ = rank_targets(q, torch.randn(len(corpus), 4), req.targets, req.exclude)
    assert len(ranks) == 1
