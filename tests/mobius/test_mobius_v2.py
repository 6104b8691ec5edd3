"""MOBIUS v2 options: label cleaning, id dropout, click-minus-bad retrieval, tempered and
two-stage BRW, the teacher-relevant validation metric, paper mode, the fast lexical teacher."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twotower.config import MobiusObjectiveConfig
from twotower.data.simulator import SimulatorConfig, simulate
from twotower.errors import ConfigError
from twotower.features.encoders import OOV
from twotower.mobius.teachers import LexicalTeacher
from twotower.mobius.v2 import (RelevantValidation, clean_click_labels, drop_item_ids,
                                two_stage_scores)
from twotower.models import build_model
from twotower.models.mobius import BAD, CLICK, UNCLICK, MobiusConfig
from twotower.towers.embedding import FieldSpec


def tiny_model(**kw):
    schema = {"user_id": FieldSpec("categorical", "query", 20, "user_id", 8),
              "ad_id": FieldSpec("categorical", "item", 30, "ad_id", 8)}
    return build_model(MobiusConfig(embedding_dim=8, hidden=[16], output_dim=16, **kw), schema)


def test_clean_labels_relabel_and_downweight_only_low_relevance_clicks():
    target = torch.tensor([CLICK, CLICK, UNCLICK, CLICK])
    weight = torch.ones(4)
    rel = torch.tensor([0.9, 0.1, 0.1, 0.49])
    t, w = clean_click_labels(target, weight, rel, 0.5, "relabel_bad", 0.1)
    assert t.tolist() == [CLICK, BAD, UNCLICK, BAD] and w.tolist() == [1, 1, 1, 1]
    t, w = clean_click_labels(target, weight, rel, 0.5, "downweight", 0.25)
    assert t.tolist() == target.tolist() and w.tolist() == [1, 0.25, 1, 0.25]


def test_item_id_dropout_replaces_a_share_by_oov():
    ids = torch.arange(2, 10_002)
    g = torch.Generator().manual_seed(0)
    out = drop_item_ids({"ad_id": ids, "ad_title": ids[:, None]}, "ad_id", 0.3, g)
    dropped = out["ad_id"] == OOV
    assert 0.27 < dropped.float().mean() < 0.33
    assert torch.equal(out["ad_id"][~dropped], ids[~dropped])
    assert torch.equal(out["ad_title"], ids[:, None])  # content untouched
    assert drop_item_ids({"ad_id": ids}, "ad_id", 0.0, g)["ad_id"] is ids


def test_click_minus_bad_is_one_exact_inner_product():
    m = tiny_model(retrieval="click_minus_bad")
    q = m.encode_query({"user_id": torch.tensor([2, 3, 4])})
    i = m.encode_item({"ad_id": torch.tensor([2, 5, 6, 7, 8])})
    s = m.retrieval_query(q)[:, 0] @ m.retrieval_item(i).T
    ref = q[:, CLICK] @ i[:, CLICK].T - q[:, BAD] @ i[:, BAD].T
    assert torch.allclose(s, ref, atol=1e-5)
    c = m.contract()
    assert c["retrieval"] == "click_minus_bad" and c["dim"] == 32
    assert tiny_model().contract()["retrieval"] == "click"
    with pytest.raises(ValueError, match="num_vectors"):
        MobiusConfig(retrieval="click_minus_bad", num_vectors=2)


def test_modes_fill_their_recipe_and_paper_mode_refuses_v2_options():
    from pydantic import ValidationError

    from twotower.config import MOBIUS_RECIPES, MOBIUS_RETRIEVAL
    from twotower.mobius.v2 import resolve_retrieval

    paper = MobiusObjectiveConfig(mode="paper")
    assert {k: getattr(paper, k) for k in MOBIUS_RECIPES["paper"]} == MOBIUS_RECIPES["paper"]
    v2 = MobiusObjectiveConfig()
    assert v2.mode == "v2"
    assert {k: getattr(v2, k) for k in MOBIUS_RECIPES["v2"]} == MOBIUS_RECIPES["v2"]
    assert MobiusObjectiveConfig(clean_labels="none").clean_labels == "none"  # v2: any value
    for field, value in (("clean_labels", "relabel_bad"), ("item_id_dropout", 0.2),
                         ("brw_alpha", 0.5)):
        with pytest.raises(ValidationError, match=field):
            MobiusObjectiveConfig(mode="paper", **{field: value})
    model = MobiusConfig()
    resolve_retrieval(paper, model)
    assert model.retrieval == "click"
    model = MobiusConfig()
    resolve_retrieval(v2, model)
    assert model.retrieval == MOBIUS_RETRIEVAL["v2"]
    model = MobiusConfig(retrieval="click_minus_bad")
    resolve_retrieval(v2, model)
    assert model.retrieval == "click_minus_bad"
    with pytest.raises(ConfigError, match="model.retrieval"):
        resolve_retrieval(paper, MobiusConfig(retrieval="click_minus_bad"))


def test_fast_lexical_teacher_equals_the_broadcast_reference():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    qs = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(40)]
    ads = [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(70)]
    t = LexicalTeacher()
    t.prepare(qs, ads)
    qk, ak = torch.arange(40), torch.arange(70)
    q, w, a = t.query_tokens[qk], t.query_weight[qk], t.ad_tokens[ak]
    ref = ((q[:, None, :, None] == a[None, :, None, :]).any(-1).float() * w[:, None]).sum(-1)
    assert torch.allclose(t.score(qk, ak), ref.clamp(0, 1), atol=1e-6)
    pq, pa = torch.randint(40, (500,)), torch.randint(70, (500,))
    assert torch.allclose(t.score_pairs(pq, pa), ref.clamp(0, 1)[pq, pa], atol=1e-6)


def test_relevant_validation_counts_only_teacher_relevant_hits():
    # 2 requests; targets: r0 -> pos 1 (relevant, value 2), pos 2 (irrelevant); r1 -> pos 0 (rel.)
    ranks = np.array([0, 0, 5])
    t_req = np.array([0, 0, 1])
    target_rel = np.array([0.9, 0.1, 0.8])
    value = np.array([2.0, 5.0, 1.0])
    topk = np.array([[1, 2], [3, 0]])
    rel_of = {(0, 1): 0.9, (0, 2): 0.1, (1, 3): 0.0, (1, 0): 0.8}
    v = RelevantValidation(target_rel, value, 0.5,
                           lambda r, p: np.array([rel_of[(a, b)] for a, b in zip(r, p)]))
    out = v.metrics(ranks, t_req, topk, 2, [2])
    assert out["relevant_recall@2"] == pytest.approx(0.5)  # r0: 1/1, r1: 0/1
    assert out["relevant_value@2"] == pytest.approx(0.5)
    assert out["teacher_relevant@2"] == pytest.approx(0.5)  # (1, 2) ; (3, 0) -> 2 of 4


def test_two_stage_keeps_the_top_n_and_ranks_survivors_by_cos_times_weight():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(50, 3, 8, generator=g), dim=-1)
    w = torch.rand(50, generator=g) + 0.1
    s = two_stage_scores(q, items, w, n=10, alpha=0.5, floor=float("inf"), temperature=0.1)
    cos = q[:, CLICK] @ items[:, CLICK].T
    top = cos.topk(10, dim=1).indices
    assert torch.isinf(s).sum(1).tolist() == [40] * 4
    assert set(s.topk(10, dim=1).indices[0].tolist()) == set(top[0].tolist())
    expect = (cos.gather(1, top) * w[top] ** 0.5).argsort(1, descending=True)
    got = s.gather(1, top).argsort(1, descending=True)
    assert torch.equal(got, expect)
    # a floor nobody passes keeps the same order; a floor of 0 too (all fail)
    s0 = two_stage_scores(q, items, w, n=10, alpha=0.5, floor=0.0, temperature=0.1)
    assert torch.equal(s0.gather(1, top).argsort(1, descending=True), expect)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("mobius_v2_sim")
    simulate(SimulatorConfig(n_impressions=12_000, n_ads=300, n_queries=150, n_users=100,
                             seed=2), d / "data")
    return d


def test_v2_run_end_to_end(sim):
    """Every v2 option in one tiny run: the teacher-relevant metric selects the epoch, the
    contract records click-minus-bad retrieval and the tempered BRW vectors are v * w^alpha."""
    from twotower.index.export import read_vectors
    from twotower.pipeline import train_run
    from twotower.presets import mobius_simulator_config

    cfg = mobius_simulator_config(
        sim / "data", sim / "v2",
        train={"epochs": 2, "batch_size": 256, "progress": False, "max_steps": 40},
        eval={"ks": [10], "metric": "relevant_value@10"},
        model={"name": "mobius", "retrieval": "click_minus_bad", "embedding_dim": 16,
               "hidden": [32], "output_dim": 16, "num_vectors": 3},
        objective={"name": "mobius", "mobius": {
            "mode": "v2", "clean_labels": "relabel_bad", "item_id_dropout": 0.3,
            "brw_alpha": 0.5, "warmup_steps": 5}})
    for f in cfg.data.features:
        if f.kind.value == "text":
            f.num_buckets = 512
    run = train_run(cfg, overwrite=True)
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "valid" in x or any(k.startswith("relevant_value") for k in x)]
    assert val, lines[-3:]
    contract = json.loads((run.run_dir / "contract.json").read_text())
    assert contract["retrieval"] == "click_minus_bad" and contract["dim"] == 32
    assert contract["brw_alpha"] == 0.5 and contract["brw_weight"] == "bid"
    # `twotower index` folds the tempered weight by default: its scores = (c.c - b.b) * bid^0.5
    from twotower.index.run_index import build_run_index

    ids, raw = read_vectors(run.run_dir / "embeddings" / "items.parquet")
    vi = build_run_index(run.run_dir, "flat")
    assert vi.manifest["weight_column"] == "bid"
    import pyarrow.parquet as pq

    ads = pq.read_table(sim / "data" / "ads.parquet")
    bid = dict(zip(ads["ad_id"].to_pylist(), ads["bid"].to_pylist()))
    w = np.array([bid[i] for i in ids.to_pylist()]) ** 0.5
    raw = np.asarray(raw)
    q = raw[:3] / np.linalg.norm(raw[:3], axis=1, keepdims=True)  # any query-like vectors
    scores, labels = vi.search(q.astype(np.float32), 5)
    exact = (q @ (raw / np.linalg.norm(raw, axis=1, keepdims=True)).T) * w[None, :]
    assert np.allclose(scores, -np.sort(-exact, axis=1)[:, :5], atol=1e-4)

    # two-stage BRW as an index path: ANN top N by the model, then cos(click) x bid^0.5 with the
    # p(bad)/p(click) <= 1 floor first; recorded in the manifest, kept by save / load
    from twotower.index.ann import load_index

    vi2 = build_run_index(run.run_dir, "flat", brw="two-stage", brw_n=20, brw_floor=1.0)
    st = vi2.manifest["two_stage"]
    assert st == {"n": 20, "alpha": 0.5, "floor": 1.0, "temperature": contract["temperature"],
                  "halves": True} and vi2.manifest["dim"] == 33
    loaded = load_index(run.run_dir)
    assert loaded.manifest["two_stage"] == st
    qs = np.hstack([raw[:4, :16], -raw[:4, 16:]])  # [c, -b] query-like vectors
    qs = (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32)
    s2, l2 = loaded.search(qs, 5)
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    first = np.argsort(-(qs @ x.T), axis=1)[:, :20]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    for r in range(4):
        c = unit(raw[first[r], :16]) @ unit(qs[r, :16])
        b = unit(raw[first[r], 16:]) @ unit(-qs[r, 16:])
        key = c * w[first[r]]
        passes = (b - c) / st["temperature"] <= 0.0
        order = sorted(range(20), key=lambda j: (not passes[j], -key[j]))[:5]
        assert [int(v) for v in l2[r]] == [int(first[r][j]) for j in order]
        assert np.allclose(s2[r], key[order], atol=1e-4)
    with pytest.raises(ConfigError, match="kind 'ivf-pq'"):
        build_run_index(run.run_dir, "ivf-pq", brw="two-stage")
