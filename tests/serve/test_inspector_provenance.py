"""Inspector rows: each item's best query vector (multi-interest) and the channel carried by the
Retriever's answer, over a real FAISS index."""
import numpy as np

from twotower.index.ann import build_index
from twotower.serve.inspector import Inspector
from twotower.serve.retriever import Loaded, merge_multi_vector


class TwoInterestRetriever:
    """The parts of a Retriever the inspector uses, with a fixed two-vector query."""

    def __init__(self, vi, q):
        self._live, self.q = Loaded(vi, "v000001"), q
        self.version, self.contract = "v000001", {}

    def encode(self, requests):
        return self.q[None]  # [1, V=2, D]

    def retrieve(self, requests, k):
        s, lab = self._live.index.search(self.q, k)
        s, lab = merge_multi_vector(s.reshape(1, -1), lab.reshape(1, -1), k)
        ids = self._live.index.raw_ids(lab[0])
        return {"results": [{"ids": ids, "scores": s[0].tolist(),
                             "channels": [f"ch{int(i) % 3}" for i in ids]}]}


def test_best_vector_and_channel_per_item():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    vi = build_index(items, np.arange(1000, 1300), "flat")
    q = rng.normal(size=(2, 8)).astype(np.float32)
    out = Inspector(TwoInterestRetriever(vi, q)).search({}, 10, "v000001")
    scores = q @ items.T  # [2, 300]
    best = scores.max(0)
    top = np.argsort(-best)[:10]
    assert [r["id"] for r in out["results"]] == [1000 + int(i) for i in top]
    assert np.allclose([r["score"] for r in out["results"]], best[top], atol=1e-5)
    assert [r["vector"] for r in out["results"]] == [int(scores[:, i].argmax()) for i in top]
    assert {r["vector"] for r in out["results"]} == {0, 1}  # both interests retrieve here
    assert [r["channel"] for r in out["results"]] == [f"ch{(1000 + int(i)) % 3}" for i in top]
    assert out["vectors"] == 2
