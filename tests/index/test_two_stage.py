"""Two-stage BRW (index.two_stage): settings checks and the stage-2 order."""
from __future__ import annotations

import numpy as np
import pytest

from twotower.errors import ConfigError
from twotower.index.ann import build_index
from twotower.index.two_stage import two_stage_settings


def test_settings_refuse_what_the_index_cannot_do():
    mob = {"retrieval": "click_minus_bad", "brw_alpha": 0.5, "temperature": 0.1}
    assert two_stage_settings(mob, "hnsw", 100, 2.0)["halves"]
    with pytest.raises(ConfigError, match="click_minus_bad"):
        two_stage_settings({"retrieval": "click"}, "flat", 100, 1.0)
    with pytest.raises(ConfigError, match="sq8"):
        two_stage_settings(mob, "sq8", 100, None)
    with pytest.raises(ConfigError, match="brw-n"):
        two_stage_settings(mob, "flat", 0, None)


def test_weight_reorders_only_the_models_candidates():
    """Click retrieval, no floor: the result is the top N by cosine reranked by cos x w — a
    heavy item outside the model's top N never enters (folding it in would put it first)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=300).astype(np.float32)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cos = q @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    far = int(np.argmin(cos[0]))
    w[far] = 1e4  # folded BRW would rank it first for query 0
    st = two_stage_settings({"retrieval": "click", "brw_alpha": 1.0}, "flat", 30, None)
    vi = build_index(x, np.arange(300), "flat", None, w, normalize=True, two_stage_settings=st)
    s, lab = vi.search(q, 10)
    for r in range(5):
        top = np.argsort(-cos[r])[:30]
        ref = top[np.argsort(-(cos[r, top] * w[top]), kind="stable")][:10]
        assert list(lab[r]) == list(ref)
        assert np.allclose(s[r], cos[r, ref] * w[ref], atol=1e-5)
    assert far not in lab[0]
    assert vi.manifest["recall"]["recall"] == 1.0  # the ANN stage (exact here)
