"""Feature-masking views and the contrastive loss (Yao et al., CIKM 2021)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.errors import ConfigError
from twotower.objectives.ssl import (correlated_mask, feature_dropout, feature_mutual_information,
                                     make_views, uniform_item_rows, view_contrastive_loss)

NAMES = ["item_id", "category", "brand", "title", "price", "tags"]


def items(b=16) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"item_id": torch.randint(1, 50, (b,), generator=g),
            "category": torch.randint(1, 5, (b,), generator=g),
            "brand": torch.randint(1, 9, (b,), generator=g),
            "title": torch.randint(1, 90, (b, 6), generator=g),
            "price": torch.randn(b, generator=g),
            "tags": torch.randint(1, 30, (b, 3), generator=g)}


def masked_of(view: dict, original: dict) -> set[str]:
    return {n for n in view if not torch.equal(view[n], original[n]) and not view[n].any()}


@pytest.mark.parametrize("seed", range(10))
def test_complementary_views_share_no_masked_feature_and_cover_all(seed):
    feats = items()
    v1, v2, m1, m2 = make_views(feats, NAMES, "crfm", torch.Generator().manual_seed(seed))
    assert set(m1).isdisjoint(m2) and set(m1) | set(m2) == set(NAMES)
    assert masked_of(v1, feats) == set(m1) and masked_of(v2, feats) == set(m2)
    for name in NAMES:  # a feature masked in one view is intact in the other
        assert torch.equal(v1[name], feats[name]) or torch.equal(v2[name], feats[name])


def test_random_masking_masks_half_in_each_view_independently():
    feats = items()
    pairs = [make_views(feats, NAMES, "rfm", torch.Generator().manual_seed(s))[2:] for s in range(30)]
    assert all(len(m1) == len(m2) == 3 for m1, m2 in pairs)
    assert any(set(m1) & set(m2) for m1, m2 in pairs)  # unlike crfm, the views may overlap


def test_mutual_information_finds_the_correlated_pair():
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 20, 5000)
    cols = {"category": cat, "parent": cat // 4, "noise": rng.integers(0, 20, 5000),
            "price": rng.normal(size=5000) + cat, "title": rng.integers(1, 100, (5000, 4))}
    mi = feature_mutual_information(cols)
    names = list(cols)
    c = names.index("category")
    assert mi[c, names.index("parent")] > 5 * mi[c, names.index("noise")]
    assert mi[c, names.index("price")] > 5 * mi[c, names.index("noise")]
    assert np.allclose(mi, mi.T)


def test_correlated_masking_groups_by_mutual_information():
    names = ["a", "b", "c", "d"]
    mi = np.array([[3, 2, .1, .1], [2, 3, .1, .1], [.1, .1, 3, 1.5], [.1, .1, 1.5, 3]])
    assert correlated_mask(names, mi, 0) == ["a", "b"]
    assert correlated_mask(names, mi, 3) == ["d", "c"]
    feats = {n: torch.arange(1, 5) for n in names}
    seen = {tuple(sorted(make_views(feats, names, "cfm", torch.Generator().manual_seed(s), mi)[2]))
            for s in range(20)}
    assert seen == {("a", "b"), ("c", "d")}


def test_views_refuse_bad_settings():
    with pytest.raises(ConfigError, match="masking"):
        make_views(items(), NAMES, "zeros", torch.Generator())
    with pytest.raises(ConfigError, match="mutual information"):
        make_views(items(), NAMES, "cfm", torch.Generator())
    with pytest.raises(ConfigError, match="two item features"):
        make_views(items(), ["item_id"], "crfm", torch.Generator())


def test_feature_dropout_zeroes_values_at_the_rate():
    feats = {"title": torch.randint(1, 90, (2000, 8))}
    out = feature_dropout(feats, 0.25, torch.Generator().manual_seed(0))
    share = (out["title"] == 0).float().mean().item()
    assert 0.22 < share < 0.28
    assert torch.equal(feature_dropout(feats, 0.0, torch.Generator())["title"], feats["title"])


def test_contrastive_loss_prefers_aligned_views_and_trains_both():
    z = torch.randn(32, 8)
    aligned = view_contrastive_loss(z, z + 0.01 * torch.randn(32, 8), 0.1)
    shuffled = view_contrastive_loss(z, z[torch.randperm(32)], 0.1)
    assert aligned < 0.3 * shuffled
    a, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    view_contrastive_loss(a, b, 0.2).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_ssl_batch_is_uniform_over_the_corpus_not_by_popularity():
    rows = uniform_item_rows(10, 100_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(rows, minlength=10).float() / 100_000
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)
