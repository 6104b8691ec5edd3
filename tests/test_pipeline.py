"""End-to-end runs: the contract, exported embeddings, every objective, streaming training."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from twotower.eval.offline import encode_corpus
from twotower.features.feature_set import FeatureSet
from twotower.index.export import read_vectors
from twotower.pipeline import evaluate_run, train_run
from twotower.runs import RunData, load_model, load_run_config
from twotower.run import RunDir


@pytest.fixture(scope="module")
def trained(sim_dir, tmp_path_factory):
    from twotower.presets import simulator_config

    from conftest import tiny_sections

    root = tmp_path_factory.mktemp("pipeline")
    cfg = simulator_config(sim_dir, root / "run", **tiny_sections(epochs=1))
    return train_run(cfg), cfg


def test_contract(trained):
    summary, cfg = trained
    run = RunDir(summary.run_dir)
    c = json.loads(run.contract.read_text())
    assert c["metric"] == "inner_product"
    assert c["normalized"] is True
    assert c["temperature"] == pytest.approx(cfg.objective.temperature)
    assert c["dim"] == cfg.model.output_dim
    assert c["item_id"] == "ad_id"
    assert c["weights_sha256"] == hashlib.sha256(run.weights.read_bytes()).hexdigest()
    ids, vecs = read_vectors(run.embeddings / "items.parquet")
    assert c["item_count"] == len(ids) == vecs.shape[0]


def test_exported_items_match_corpus_and_encoder(trained):
    summary, cfg = trained
    run = RunDir(summary.run_dir)
    features = FeatureSet.load(run.features)
    corpus = RunData(load_run_config(run), features).corpus()
    model = load_model(run)
    ids, vecs = read_vectors(run.embeddings / "items.parquet")
    assert ids.to_pylist() == corpus.ids.to_pylist()
    assert len(set(ids.to_pylist())) == len(ids)
    expected = encode_corpus(model, corpus).numpy()
    np.testing.assert_allclose(vecs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    npy = np.load(run.embeddings / "items.npy", allow_pickle=False)
    np.testing.assert_array_equal(npy, vecs)
    # ids are the raw ad ids of the ads table
    ads = set(pq.read_table(cfg.data.items, columns=["ad_id"])["ad_id"].to_pylist())
    assert set(ids.to_pylist()) <= ads


def test_metrics_and_report(trained):
    summary, _ = trained
    run = RunDir(summary.run_dir)
    m = json.loads(run.metrics.read_text())
    assert m["split"] == "test" and m["requests"] > 0
    for k in ("hr@5", "recall@20", "ndcg@20", "mrr", "coverage@20"):
        assert 0.0 <= m[k] <= 1.0
    report = json.loads(run.report.read_text())
    assert report["data"]["rows_encoded"] > 0 and "oov" in report["data"]
    assert report["train"]["steps"] > 0
    assert summary.train is not None and summary.train.steps == report["train"]["steps"]
    again = evaluate_run(run.root, "test")
    for k in ("hr@5", "ndcg@20", "mrr"):
        assert again[k] == pytest.approx(m[k])


@pytest.mark.parametrize("objective", [
    {"name": "mixed_negatives", "uniform_negatives": 32},
    {"name": "pointwise_bce"},
])
def test_other_objectives_train_end_to_end(tiny_config, tmp_path, objective):
    summary = train_run(tiny_config(tmp_path / "run", train={"epochs": 1, "max_steps": 50},
                                  objective=objective))
    assert summary.train.steps > 0
    assert 0.0 <= summary.metrics["hr@20"] <= 1.0
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in log if "train_loss" in r)
    if objective["name"] == "pointwise_bce":
        # the pointwise task trains on unclicked rows too: more examples than clicks
        assert summary.train.examples > 0
        assert (tmp_path / "run" / "model.safetensors").is_file()


def test_streaming_training_sees_the_same_rows(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "run", data={"chunk_rows": 700})
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()))
    mem = data.train_source(True)
    stream = data.train_source(True, stream=True)
    b = 16
    mem_ids = np.sort(np.concatenate([x.item_ids.numpy() for x in mem.batches(b, seed=1)]))
    st_batches = list(stream.batches(b, seed=1))
    assert all(len(x) == b for x in st_batches)
    st_ids = np.sort(np.concatenate([x.item_ids.numpy() for x in st_batches]))
    assert len(st_ids) == len(mem_ids) == (len(mem) // b) * b
    # same multiset of rows up to the final partial batch
    assert np.isin(st_ids, mem.item_index).all()
    # skip resumes the same sequence
    skipped = list(stream.batches(b, seed=1, skip=3))
    assert len(skipped) == len(st_batches) - 3
    assert torch.equal(skipped[0].item_ids, st_batches[3].item_ids)


def test_bad_data_with_overwrite_keeps_the_old_run(tiny_config, tmp_path, trained):
    from twotower.config import FeatureConfig
    from twotower.errors import DataError

    summary, _ = trained
    run = RunDir(summary.run_dir)
    before = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    cfg = tiny_config(run.root)
    cfg.data.features.append(FeatureConfig(name="no_such_column", side="query"))
    with pytest.raises(DataError, match="no_such_column"):
        train_run(cfg, overwrite=True)
    after = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    assert after == before


def test_resume_without_any_checkpoint_equals_a_fresh_run(tiny_config, tmp_path):
    import shutil

    fresh = train_run(tiny_config(tmp_path / "fresh", train={"epochs": 1}))
    # a run killed after fitting its features but before its first checkpoint
    shutil.copytree(fresh.run_dir, tmp_path / "early",
                    ignore=lambda d, names: [n for n in names if n not in
                                             ("config.yaml", "features.json")])
    (tmp_path / "early" / "config.yaml").write_text(
        (tmp_path / "early" / "config.yaml").read_text().replace(str(tmp_path / "fresh"),
                                                                str(tmp_path / "early")))
    resumed = train_run(resume_dir=tmp_path / "early")
    from safetensors.numpy import load_file

    a = load_file(str(RunDir(fresh.run_dir).weights))
    b = load_file(str(RunDir(resumed.run_dir).weights))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
