"""Merge: determinism, dedup attribution, overfetch independence, calibration, quotas, exclusions."""
import numpy as np
import pytest

from twotower.channels.config import Calibration, MergeConfig, Quota
from twotower.channels.merge import Merger, calibrate, fit_isotonic, snake_quotas


def merger(names, weights=None, cal=Calibration.RRF, quota=Quota.NONE, fetch_k=10, quotas=None,
           **merge):
    return Merger(list(names), MergeConfig(calibration=cal, quota=quota, fetch_k=fetch_k, **merge),
                  weights or {n: 1.0 for n in names}, {n: cal for n in names},
                  {n: fetch_k for n in names}, quotas or {})


def answer(*lists):
    """One request: each list of (id, score) -> a channel answer."""
    return ([[i for i, _ in lst] for lst in lists], [np.array([s for _, s in lst]) for lst in lists])


def one(ids, scores=None):
    return ([list(ids)], [np.asarray(scores if scores is not None else -np.arange(len(ids)), float)])


def test_weighted_rrf_and_dedup_keeps_every_channel():
    m = merger(["a", "b"], {"a": 2.0, "b": 1.0})
    res = m.merge({"a": one([1, 2, 3], [0.9, 0.8, 0.7]), "b": one([3, 4], [5.0, 4.0])}, 1, 4)[0]
    fused = {i: s for i, s in zip(res["ids"], res["scores"])}
    assert fused[3] == pytest.approx(2 / 63 + 1 / 61)  # rank 2 in a, rank 0 in b
    assert fused[1] == pytest.approx(2 / 61)
    assert res["ids"][0] == 3  # found by both channels: it collects both contributions
    brk = res["channels"][res["ids"].index(3)]
    assert brk == {"a": {"rank": 2, "raw": 0.7, "calibrated": pytest.approx(1 / 63)},
                   "b": {"rank": 0, "raw": 5.0, "calibrated": pytest.approx(1 / 61)}}
    assert len(res["ids"]) == len(set(res["ids"])) == 4


def test_deterministic_seeded_tie_breaks():
    # two channels, equal weights, mirror ranks: every item ties with another
    ans = {"a": one([1, 2, 3, 4]), "b": one([4, 3, 2, 1])}
    runs = [merger(["a", "b"], seed=7).merge(ans, 1, 4)[0]["ids"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    orders = {tuple(merger(["a", "b"], seed=s).merge(ans, 1, 4)[0]["ids"]) for s in range(12)}
    assert len(orders) > 1  # the seed, not the input order, decides ties
    # the same seed gives the same order whichever channel is listed first
    flipped = merger(["b", "a"], seed=7).merge(ans, 1, 4)[0]["ids"]
    assert flipped == runs[0]


def test_result_does_not_depend_on_route_depth_beyond_fetch_k():
    rng = np.random.default_rng(0)
    deep = {c: one(rng.permutation(500)[:500], np.sort(rng.random(500))[::-1]) for c in "abc"}
    cut = {c: ([ids[0][:20]], [sc[0][:20]]) for c, (ids, sc) in deep.items()}
    for cal in Calibration:
        if cal == Calibration.ISOTONIC:
            continue
        m = merger("abc", cal=cal, fetch_k=20)
        assert m.merge(deep, 1, 30) == m.merge(cut, 1, 30), cal
    # and a smaller N is a prefix of a larger one
    m = merger("abc", cal=Calibration.ZSCORE, fetch_k=20)
    assert m.merge(deep, 1, 10)[0]["ids"] == m.merge(deep, 1, 40)[0]["ids"][:10]


def test_calibrations():
    raw = np.array([3.0, 2.0, 2.0, -1.0])
    assert calibrate(Calibration.NONE, raw).tolist() == raw.tolist()
    z = calibrate(Calibration.ZSCORE, raw)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    mm = calibrate(Calibration.MINMAX, raw)
    assert mm.max() == 1 and mm.min() == 0
    assert calibrate(Calibration.RRF, raw, rrf_k=0).tolist() == [1, 1 / 2, 1 / 3, 1 / 4]
    # scale-free calibrations make a channel scoring in [0, 100] comparable with one in [0, 1]
    m = merger(["small", "big"], cal=Calibration.MINMAX)
    res = m.merge({"small": one([1, 2], [1.0, 0.0]), "big": one([3, 4], [100.0, 50.0])}, 1, 4)[0]
    assert set(res["ids"][:2]) == {1, 3}
    raw_m = merger(["small", "big"], cal=Calibration.NONE)
    res = raw_m.merge({"small": one([1, 2], [1.0, 0.0]), "big": one([3, 4], [100.0, 50.0])}, 1, 4)[0]
    assert res["ids"][:2] == [3, 4]  # no normalisation: raw scales decide


def test_isotonic_fit_is_monotone_and_calibrated():
    rng = np.random.default_rng(1)
    s = rng.random(20_000) * 100  # raw scale 0..100, true click probability s / 200
    y = rng.random(20_000) < s / 200
    iso = fit_isotonic(s, y, bins=200)
    assert np.all(np.diff(iso.y) >= -1e-12)
    grid = np.array([10.0, 50.0, 90.0])
    assert np.allclose(iso(grid), grid / 200, atol=0.03)
    # a reference: PAV on an already-sorted violating sequence pools the violators
    iso2 = fit_isotonic(np.arange(4.0), np.array([0, 1, 0, 1]), bins=4)
    assert iso2.y.tolist() == [0.0, 0.5, 1.0]
    # isotonic calibration merges two channels on probabilities, not raw scales
    a_iso, b_iso = fit_isotonic(s, y, 200), fit_isotonic(s / 100, rng.random(20_000) < 0.9 * s / 100, 200)
    m = Merger(["a", "b"], MergeConfig(calibration="isotonic"), {"a": 1, "b": 1},
               {"a": Calibration.ISOTONIC, "b": Calibration.ISOTONIC}, {"a": 10, "b": 10}, {},
               {"a": a_iso, "b": b_iso})
    res = m.merge({"a": one([1], [90.0]), "b": one([2], [0.9])}, 1, 2)[0]
    assert res["ids"] == [2, 1]  # b's 0.9 means p ~ 0.81, a's 90 means p ~ 0.45


def test_exclusions_apply_to_every_channel():
    m = merger(["a", "b"])
    res = m.merge({"a": one([1, 2, 3]), "b": one(["2", 5])}, 1, 10, exclude=[[2]])[0]
    assert 2 not in res["ids"] and "2" not in res["ids"] and set(res["ids"]) == {1, 3, 5}


def test_fixed_quota_keeps_each_channels_share():
    ans = {"a": one(list(range(0, 20))), "b": one(list(range(100, 120)))}
    m = merger(["a", "b"], {"a": 10.0, "b": 1.0}, quota=Quota.FIXED, fetch_k=20,
               quotas={"a": 2, "b": 3})
    res = m.merge(ans, 1, 6)[0]
    assert {100, 101, 102} <= set(res["ids"]) and {0, 1} <= set(res["ids"])
    assert sum(i < 100 for i in res["ids"]) == 3  # the 6th slot goes to the best fused: a's 3rd
    assert res["scores"] == sorted(res["scores"], reverse=True)


def test_priority_quota_carries_unused_quota_over():
    ans = {"a": one([1, 2]), "b": one(list(range(100, 110))), "c": one(list(range(200, 210)))}
    m = merger("abc", {"a": 1, "b": 1, "c": 1}, quota=Quota.PRIORITY, quotas={"a": 4, "b": 1, "c": 1})
    res = m.merge(ans, 1, 6)[0]
    # a had only 2 of its 4: its 2 unused slots pass to b (1 + 2 = 3), c keeps its 1
    assert sorted(res["ids"]) == [1, 2, 100, 101, 102, 200]
    # fixed quotas do not carry over: b keeps exactly its own 1 before the fused fill
    ans2 = {"a": one([1, 2]), "b": one(list(range(100, 110))), "c": one([200, 201])}
    fixed = merger("abc", {"a": 1, "b": 0.1, "c": 5}, quota=Quota.FIXED, quotas={"a": 4, "b": 1, "c": 1})
    got = fixed.merge(ans2, 1, 5)[0]["ids"]
    assert sorted(got) == [1, 2, 100, 200, 201]


def test_snake_quotas_are_weight_proportional():
    assert snake_quotas([3, 1], 8).tolist() == [6, 2]
    assert snake_quotas([1, 1, 1], 10).sum() == 10
    ans = {"a": one(list(range(0, 50))), "b": one(list(range(100, 150)))}
    m = merger(["a", "b"], {"a": 3.0, "b": 1.0}, quota=Quota.SNAKE, fetch_k=50)
    res = m.merge(ans, 1, 20)[0]
    assert sum(i < 100 for i in res["ids"]) == 15 and sum(i >= 100 for i in res["ids"]) == 5
    # a channel with fewer items than its quota leaves the rest to the others
    short = {"a": one([0, 1]), "b": one(list(range(100, 150)))}
    assert len(m.merge(short, 1, 20)[0]["ids"]) == 20


def test_failed_channel_is_skipped_and_max_fusion():
    m = merger(["a", "b"], fusion="max")
    res = m.merge({"a": one([1, 2])}, 1, 5)[0]  # b absent (failed)
    assert res["ids"] == [1, 2] and all(set(c) == {"a"} for c in res["channels"])
    res = m.merge({"a": one([1, 2]), "b": one([2, 1])}, 1, 5)[0]
    assert res["scores"][0] == pytest.approx(1 / 61)


def test_popularity_debias_promotes_the_tail():
    pop = {1: 1000.0, 2: 0.0}
    m = merger(["a", "b"], debias_alpha=0.5)
    m.popularity = lambda ids: np.array([pop.get(i, 0.0) for i in ids])
    ans = {"a": one([1, 2]), "b": one([1, 2])}
    assert merger(["a", "b"]).merge(ans, 1, 2)[0]["ids"] == [1, 2]
    assert m.merge(ans, 1, 2)[0]["ids"] == [2, 1]
