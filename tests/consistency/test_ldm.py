"""LDM (objective.name: ldm): funnel negatives, the two heads, the recipe end to end."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from twotower.errors import ConfigError
from twotower.pipeline import train_run


def ldm_config(funnel_sim_dir, path, train=None, **ldm):
    from twotower.config import merge
    from twotower.presets import simulator_config
    from conftest import tiny_sections

    sections = merge(tiny_sections(**(train or {"epochs": 1})), {
        "objective": {"name": "ldm", "ldm": {"funnel": str(funnel_sim_dir / "funnel.parquet"),
                                             "requests_per_batch": 8, **ldm}}})
    return simulator_config(funnel_sim_dir, path, **sections)


def prepared_source(cfg):
    from twotower.consistency.ldm import LDMRecipe
    from twotower.features.feature_set import FeatureSet
    from twotower.runs import RunData

    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()), "train")
    corpus = data.corpus()
    return LDMRecipe().prepare(cfg, data, corpus, False), corpus


def test_negatives_are_exactly_the_auctioned_not_shown_items_of_the_same_request(funnel_sim_dir, tmp_path):
    cfg = ldm_config(funnel_sim_dir, tmp_path / "r")
    prepared, corpus = prepared_source(cfg)
    funnel = pq.read_table(funnel_sim_dir / "funnel.parquet").to_pandas()
    train = funnel[funnel.split == "train"]
    by_request = {s: (set(g.ad_id[g.shown]), set(g.ad_id[~g.shown])) for s, g in train.groupby("search_id")}
    f = prepared.state["funnel"]
    raw_item = np.asarray(corpus.ids.to_numpy())[f.item_rows]
    keys = f.keys.to_numpy()
    assert not set(keys) & set(funnel.search_id[funnel.split != "train"])  # held-out never trains
    for j in range(len(f)):
        rows = slice(f.indptr[j], f.indptr[j + 1])
        shown, items = f.shown[rows], raw_item[rows]
        assert (set(items[shown]), set(items[~shown])) == by_request[keys[j]]
    assert len(f) == sum(1 for p, n in by_request.values() if p and n)
    # each batch carries whole requests: its rows are those of the requests it picked
    imp = pq.read_table(funnel_sim_dir / "impressions.parquet", columns=["search_id", "user_id"])
    user_of = dict(zip(imp["search_id"].to_pylist(), imp["user_id"].to_pylist()))
    batch = next(iter(prepared.batches.batches(32, epoch=0, seed=0)))
    local = batch.extra["ldm_request"].numpy()
    sizes = np.bincount(local)
    picked = np.random.default_rng([0, 0, 1]).permutation(len(f))[:8]
    assert (sizes == np.diff(f.indptr)[picked]).all()
    assert batch.extra["ldm_shown"].numpy().tolist() == np.concatenate(
        [f.shown[f.indptr[j]:f.indptr[j + 1]] for j in picked]).tolist()
    users = batch.extra["ldm_query:user_id"].numpy()
    user_codes = {user_of[k] for k in keys[picked]}
    assert len(set(users.tolist())) <= len(user_codes)  # one query row per request


def test_ldm_loss_is_the_request_softmax_plus_the_weighted_random_head(funnel_sim_dir, tmp_path):
    from twotower.features.feature_set import feature_schema
    from twotower.objectives.consistency import request_softmax
    from twotower.objectives.losses import in_batch_softmax

    cfg = ldm_config(funnel_sim_dir, tmp_path / "r", random_weight=0.3)
    prepared, _ = prepared_source(cfg)
    from twotower.consistency.ldm import LDMRecipe
    from twotower.features.feature_set import FeatureSet
    from twotower.runs import RunData

    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    features.fit(RunData(cfg, features).reader.chunks("train", features.columns()), "train")
    torch.manual_seed(0)
    model = LDMRecipe().build_model(cfg, feature_schema(features, cfg.model.embedding_dim))
    batch = next(iter(prepared.batches.batches(32)))
    q, i = model.encode_query(batch.query), model.encode_item(batch.item)
    task = prepared.task
    task.estimator = None  # plain in-batch softmax, so the expected value is simple
    loss, logs = task.objective_loss(model, batch, 0, q, i)
    fq = model.encode_query({k[10:]: v for k, v in batch.extra.items() if k.startswith("ldm_query:")})
    fi = model.encode_item({k[9:]: v for k, v in batch.extra.items() if k.startswith("ldm_item:")})
    req = batch.extra["ldm_request"]
    ranker = request_softmax(model.head_pair_logits(fq[req], fi, "ranker") / 0.05, req,
                             batch.extra["ldm_shown"])
    random = in_batch_softmax(model.head_logits(q, i, "random") / 0.05, batch.item_ids, None, None,
                              remove_hits=True)
    torch.testing.assert_close(loss, ranker + 0.3 * random)


def test_ldm_run_records_its_head_and_serving_uses_it(funnel_sim_dir, tmp_path):
    summary = train_run(ldm_config(funnel_sim_dir, tmp_path / "run", retrieval="ranker"))
    contract = json.loads((summary.run_dir / "contract.json").read_text())
    assert contract["model"] == "ldm_heads" and contract["retrieval_head"] == "ranker"
    assert contract["base_model"] == "dssm" and contract["dim"] == 8
    report = json.loads((summary.run_dir / "report.json").read_text())["ldm"]
    assert report["funnel"]["requests"] > 0 and report["funnel"]["shown_rows"] > 0
    from twotower.runs import load_run

    run = load_run(summary.run_dir)  # serving's loader rebuilds the two-head model, ranker head
    from twotower.index.export import read_vectors

    _, vecs = read_vectors(summary.run_dir / "embeddings" / "items.parquet")
    corpus = run.corpus()
    with torch.no_grad():
        i = run.model.encode_item(corpus.tensors())
    torch.testing.assert_close(torch.from_numpy(np.array(vecs)).float(), i[:, 0].float(),
                               atol=1e-5, rtol=1e-5)


def test_ldm_config_errors_are_clear(funnel_sim_dir, tmp_path):
    with pytest.raises(ConfigError, match="objective.ldm.funnel"):
        train_run(ldm_config(funnel_sim_dir, tmp_path / "a", funnel=None))
    with pytest.raises(ConfigError, match="does not exist"):
        train_run(ldm_config(funnel_sim_dir, tmp_path / "b", funnel=str(tmp_path / "none.parquet")))
    cfg = ldm_config(funnel_sim_dir, tmp_path / "c")
    raw = cfg.model_dump(mode="json")
    raw["data"]["split_column"] = None
    raw["data"]["holdout"] = {"valid": 0.1, "group_by": "user_id"}
    from twotower.config import validate_config

    with pytest.raises(ConfigError, match="whole requests"):
        train_run(validate_config(raw, "test"))
    raw = cfg.model_dump(mode="json")
    raw["model"] = {"name": "mind", "embedding_dim": 8, "hidden": [16], "output_dim": 8}
    with pytest.raises(ConfigError, match="first"):
        train_run(validate_config(raw, "test"), overwrite=True)
    with pytest.raises(Exception, match="search_key"):
        train_run(ldm_config(funnel_sim_dir, tmp_path / "e", request="search_key"))
    assert not any((tmp_path / n).exists() for n in "abce")
