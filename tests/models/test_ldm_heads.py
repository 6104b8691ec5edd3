"""The two-head model LDM trains and serves: the served vectors score the configured head or mix."""
from __future__ import annotations

import numpy as np
import torch

from zoo_data import item_table, tiny_log, tiny_schema


def test_mixed_retrieval_vectors_score_the_configured_mix():
    from twotower.models import build_model
    from twotower.models.ldm_heads import TwoHeadConfig

    for retrieval, mix in (("mix", 0.3), ("ranker", 0.5), ("random", 0.5)):
        torch.manual_seed(0)
        model = build_model(TwoHeadConfig(embedding_dim=8, hidden=[16], output_dim=8,
                                          retrieval=retrieval, mix=mix), tiny_schema()).eval()
        b = tiny_log().batch(np.arange(6))
        q = model.encode_query(b.query)
        items = model.encode_item({k: torch.from_numpy(v) for k, v in item_table().items()})
        served = model.retrieval_query(q)[:, 0] @ model.retrieval_item(items).T
        a = {"mix": mix, "ranker": 1.0, "random": 0.0}[retrieval]
        want = a * model.head_logits(q, items, "ranker") + (1 - a) * model.head_logits(q, items, "random")
        torch.testing.assert_close(served, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.logits(q, items), want, atol=1e-5, rtol=1e-5)
        assert model.contract()["retrieval_head"] == retrieval
