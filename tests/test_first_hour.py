"""Issue 18: the first hour on your own log — holdout splits and a loud warning without one,
messages naming the config field, nothing written before the inputs are checked (every
objective), the index kind chosen from the corpus and its recall reported, `twotower init`
scaffolds, the examples, one log line per epoch, report.json's row count, `evaluate` defaults."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from twotower.cli import app
from twotower.config import dump_config, load_config, merge
from twotower.errors import DataError
from twotower.pipeline import train_run

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = {"split_column": None, "holdout": {"valid": 0.2, "test": 0.2, "group_by": "search_id"}}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def holdout_run(sim_dir, tmp_path_factory):
    """A tiny simulator run with no split column, validated and tested on held-out searches,
    trained through the CLI (whose output is not a terminal)."""
    from conftest import tiny_sections
    from twotower.presets import simulator_config

    root = tmp_path_factory.mktemp("holdout_run")
    cfg = simulator_config(sim_dir, root / "run", **merge(tiny_sections(progress=True),
                                                           {"data": HOLDOUT}))
    path = root / "cfg.yaml"
    path.write_text(dump_config(cfg))
    res = invoke("train", path)
    assert res.exit_code == 0, res.output
    return root / "run", res.output


# 1 ------------------------------------------------------------ holdout, and a warning without
def test_a_holdout_run_is_validated_and_tested(holdout_run):
    run, _ = holdout_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["requests"] > 0 and 0 <= metrics["hr@20"] <= 1
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("valid" in rec for rec in log)  # validated every epoch (early stopping works)
    assert json.loads((run / "report.json").read_text())["warnings"] == []


def test_a_run_without_validation_warns_loudly(tmp_path, tiny_config, caplog):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 1}, data={"split_column": None})
    with caplog.at_level(logging.WARNING, logger="twotower"):
        train_run(cfg)
    assert any("no validation split" in r.message and "data.holdout" in r.message
               for r in caplog.records)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "no validation split" in report["warnings"][0]


# 2 ------------------------------------------------------------ the culprit's config field
@pytest.mark.parametrize("section,field,value,needle", [
    ("eval", "group_by", "request_id", "'request_id' (asked for by eval.group_by)"),
    ("eval", "exclude_seen_by", "visitor", "'visitor' (asked for by eval.exclude_seen_by)"),
    ("data", "label", "clicked", "'clicked' (asked for by data.label)"),
    ("data", "weight", "reward", "'reward' (asked for by data.weight)"),
])
def test_a_missing_column_names_the_field_that_asked_for_it(tmp_path, tiny_config, section, field,
                                                           value, needle):
    cfg = tiny_config(tmp_path / "run", **{section: {field: value}})
    with pytest.raises(DataError) as err:
        train_run(cfg)
    assert needle in str(err.value) and "impressions.parquet" in str(err.value)


def test_a_missing_feature_column_names_its_feature(tmp_path, tiny_config):
    cfg = tiny_config(tmp_path / "run")
    cfg.data.features[1].column = "search_query"
    with pytest.raises(DataError, match=r"'search_query' \(asked for by data.features: 'query_text'\)"):
        train_run(cfg)


# 3 ------------------------------------------------------------ nothing written before the checks
@pytest.mark.parametrize("objective", ["in_batch_softmax", "mixed_negatives", "pointwise_bce", "mobius"])
def test_a_failed_check_leaves_no_run_folder_for_any_objective(tmp_path, sim_dir, objective):
    from conftest import tiny_sections
    from twotower.presets import mobius_simulator_config, simulator_config

    secs = merge(tiny_sections(), {"eval": {"group_by": "request_id"}})
    if objective == "mobius":
        cfg = mobius_simulator_config(sim_dir, tmp_path / "run", **secs)
    else:
        cfg = simulator_config(sim_dir, tmp_path / "run", **merge(secs, {"objective": {
            "name": objective, "uniform_negatives": 16 if objective == "mixed_negatives" else 0}}))
    with pytest.raises(DataError, match="asked for by eval.group_by"):
        train_run(cfg)
    assert not (tmp_path / "run").exists()
    cfg.eval.group_by = "search_id"  # fixed: the same command now trains (nothing left to resume)
    cfg.train.max_steps = 2
    assert train_run(cfg).run_dir == tmp_path / "run"


# 4 ------------------------------------------------------------ index kind and recall
def test_index_default_is_exact_for_a_small_corpus_and_reports_recall(holdout_run):
    run, _ = holdout_run
    res = invoke("index", run)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[:res.output.rindex("}") + 1])
    assert out["kind"] == "flat" and out["recall"]["recall"] == 1.0
    assert "recall@" in res.output and "against exact search" in res.output
    manifest = json.loads((Path(out["path"]) / "manifest.json").read_text())
    assert manifest["kind_chosen"].startswith("auto:") and manifest["recall"]["k"] == min(100, out["count"])


def test_default_kind_by_corpus_size_and_recall_measured_like_a_plain_loop():
    from twotower.index.ann import build_index
    from twotower.index.recall import EXACT_MAX_ITEMS, default_kind

    assert default_kind(EXACT_MAX_ITEMS) == "flat" and default_kind(EXACT_MAX_ITEMS + 1) == "ivf-flat"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    vi = build_index(x, np.arange(3000), "hnsw", {"M": 4, "ef_search": 8, "ef_construction": 8})
    rec = vi.manifest["recall"]
    assert rec["queries"] == 1000 and rec["k"] == 100
    # the same number from first principles: the sampled queries, brute-force top-100, overlap
    from twotower.index.recall import query_sample

    q, _ = query_sample(x, None)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :100]
    _, found = vi.search(q, 100)
    plain = np.mean([len(set(t) & set(f)) / 100 for t, f in zip(truth, found)])
    assert rec["recall"] == pytest.approx(plain, abs=1e-9) and rec["recall"] < 0.99


# 5 ------------------------------------------------------------ init and the examples
def interactions_log(n=600, seed=0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 50, n)
    items = rng.integers(0, 80, n)
    genres = np.array(["Action|Comedy", "Drama", "Sci-Fi|Action", "Romance|Drama|Comedy"])
    log = pa.table({
        "user_id": users, "item_id": items, "timestamp": 880_000_000 + np.arange(n) * 60,
        "history": [list(rng.integers(0, 80, rng.integers(0, 6))) for _ in range(n)],
        "genres": genres[items % 4], "gender": np.where(users % 2, "M", "F"),
        "age": (users % 5) * 10 + 18, "occupation": np.array(["student", "other", "writer"])[users % 3],
        "rating": rng.integers(1, 6, n)})
    return log, pa.table({"item_id": np.arange(80), "genres": genres[np.arange(80) % 4]})


def search_log(n=600, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    products = rng.integers(0, 70, n)
    words = np.array(["red", "running", "shoes", "wireless", "earbuds", "coffee", "grinder", "mug"])
    return pa.table({
        "session_id": np.repeat(np.arange(n // 6), 6), "user_id": rng.integers(0, 90, n),
        "query": [" ".join(words[rng.integers(0, 8, 2)]) for _ in range(n)],
        "product_id": products, "product_title": [f"{words[p % 8]} {words[(p * 3) % 8]} item" for p in products],
        "brand": np.array(["acme", "zeta", "nova"])[products % 3], "price": (products % 13) * 2.5 + 1,
        "click": (rng.random(n) < 0.3).astype(np.int8)})


@pytest.fixture
def shapes(sim_dir, tmp_path):
    """The three shapes of log the examples and `init` are for, as Parquet files."""
    data = tmp_path / "data"
    (data / "ml").mkdir(parents=True)
    pq.write_table(pq.read_table(sim_dir / "impressions.parquet").drop_columns(["split"]),
                   data / "impressions.parquet")
    pq.write_table(pq.read_table(sim_dir / "ads.parquet"), data / "ads.parquet")
    log, items = interactions_log()
    pq.write_table(log, data / "ml" / "interactions.parquet")
    pq.write_table(items, data / "ml" / "items.parquet")
    pq.write_table(search_log(), data / "search.parquet")
    return data


@pytest.mark.parametrize("example", ["impressions", "interactions", "search"])
def test_each_example_config_fits_a_log_of_its_shape(shapes, tmp_path, example):
    """The example's columns, kinds and fields hold on a log of its shape: every check passes
    and the features fit (what `twotower train` does before it creates the run folder)."""
    from twotower.features.feature_set import FeatureSet
    from twotower.intake import check_inputs, fit_features

    src = ROOT / "examples" / f"{example}.yaml"
    copy = tmp_path / f"{example}.yaml"  # beside the data, as examples/ sits beside examples/data
    copy.write_text(src.read_text())
    cfg = load_config(copy)
    cfg.train.batch_size = 32  # the test logs are tiny
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    counts = fit_features(cfg, features, check_inputs(cfg, features))
    assert counts.rows > 0 and features.fitted
    assert all(len(line) <= 110 for line in src.read_text().splitlines())


@pytest.mark.parametrize("log,item_id,label,group,kinds", [
    ("impressions.parquet", "ad_id", "click", "search_id",
     {"query_text": "text", "ad_title": "text", "bid": "dense", "user_id": "categorical"}),
    ("ml/interactions.parquet", "item_id", None, "user_id",
     {"history": "sequence", "genres": "categorical", "age": "categorical"}),
    ("search.parquet", "product_id", "click", "session_id",
     {"query": "text", "product_title": "text", "price": "dense"}),
])
def test_init_scaffolds_a_config_that_loads_and_passes_the_checks(shapes, tmp_path, log, item_id,
                                                                  label, group, kinds):
    from twotower.features.feature_set import FeatureSet
    from twotower.intake import check_inputs

    out = tmp_path / "my.yaml"
    res = invoke("init", shapes / log, "-o", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "#" in text  # commented: every choice says why
    cfg = load_config(out)
    assert cfg.data.item_id == item_id and cfg.data.label == label
    assert cfg.data.holdout is not None and cfg.data.holdout.group_by == group
    feats = {f.name: f for f in cfg.data.features}
    for name, kind in kinds.items():
        assert feats[name].kind.value == kind, (name, feats[name])
    if "history" in feats:
        assert feats["history"].vocab_from == item_id
    sides = {f.name: f.side.value for f in cfg.data.features}
    assert sides[item_id] == "item" and "query" in sides.values()
    for not_a_feature in (label, group if group != "user_id" else None, "timestamp", "position"):
        assert not_a_feature not in feats
    check_inputs(cfg, FeatureSet(cfg.data.features, cfg.data.item_id))
    again = invoke("init", shapes / log, "-o", out)
    assert again.exit_code == 1 and "already exists" in again.output


# 7 ------------------------------------------------------------ quiet logs and the row count
def test_one_line_per_epoch_when_the_output_is_not_a_terminal(holdout_run):
    _, output = holdout_run
    lines = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, output
    assert all("loss " in line and "valid recall@20 " in line and "examples/s" in line for line in lines)


def test_rows_encoded_counts_each_training_row_once(holdout_run, sim_dir):
    from twotower.data.holdout import Holdout
    from twotower.data.readers import TableSource
    from twotower.pipeline import load_run_config
    from twotower.run import RunDir

    run, _ = holdout_run
    cfg = load_run_config(RunDir(run))
    src = TableSource(sim_dir / "impressions.parquet")
    table = src.read(["search_id", "click"])
    train = Holdout(cfg.data.holdout, src).sides(table, 0) == 0
    positives = int((np.asarray(table["click"]) > 0)[train].sum())
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["rows_encoded"] == positives  # in_batch_softmax: the clicked rows


# 8 ------------------------------------------------------------ evaluate the splits that exist
def test_evaluate_defaults_to_the_splits_the_run_has(holdout_run, tmp_path, tiny_config):
    run, _ = holdout_run
    res = invoke("evaluate", run)
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["split"] == "test" and set(m["splits"]) == {"valid", "test"}
    # a run with a validation file only: evaluate just that, not a missing test split
    cfg = tiny_config(tmp_path / "v", train={"max_steps": 2},
                      data={"holdout": {"valid": 0.3}, "split_column": None})
    train_run(cfg)
    res = invoke("evaluate", tmp_path / "v")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["split"] == "valid" and "splits" not in json.loads(res.output)
