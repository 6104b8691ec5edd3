"""The `twotower` command line: one-line user errors, simulate, train -> evaluate -> export."""
from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from twotower.cli import app
from twotower.config import dump_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles):
    assert result.exit_code == 1, result.output
    out = result.output.strip()
    assert out.startswith("error: "), out
    assert "Traceback" not in out
    for n in needles:
        assert n in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_config_file(tmp_path):
    assert_user_error(invoke("train", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_bad_config_and_unknown_model(tmp_path, tiny_config):
    raw = yaml.safe_load(dump_config(tiny_config(tmp_path / "run")))
    raw["train"]["epocs"] = 1
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert_user_error(invoke("train", p), "train.epocs", "did you mean 'epochs'")
    del raw["train"]["epocs"]
    raw["model"]["name"] = "transformer9000"
    p.write_text(yaml.safe_dump(raw))
    assert_user_error(invoke("train", p), "transformer9000")
    assert_user_error(invoke("train"), "CONFIG")


def test_missing_data_column(tmp_path, tiny_config):
    raw = yaml.safe_load(dump_config(tiny_config(tmp_path / "run")))
    raw["data"]["features"].append({"name": "no_such_column", "side": "query"})
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert_user_error(invoke("train", p), "impressions.parquet", "'no_such_column'")


def test_evaluate_and_export_of_a_non_run(tmp_path):
    assert_user_error(invoke("evaluate", tmp_path), "not a run folder")
    assert_user_error(invoke("train", "--resume", tmp_path / "missing"), "not a run folder")
    assert_user_error(invoke("export", tmp_path), "not a run folder")


def test_simulate_writes_files(tmp_path):
    r = invoke("simulate", tmp_path / "sim", "--impressions", 800, "--seed", 1)
    assert r.exit_code == 0, r.output
    for name in ("impressions.parquet", "ads.parquet", "truth.npz"):
        assert (tmp_path / "sim" / name).is_file()
    bad = tmp_path / "sim.yaml"
    bad.write_text("n_adz: 5\n")
    assert_user_error(invoke("simulate", tmp_path / "sim2", "--config", bad), "n_adz")


def test_train_evaluate_export(tmp_path, tiny_config):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 1})
    p = tmp_path / "cfg.yaml"
    p.write_text(dump_config(cfg))
    r = invoke("train", p, "--set", "train.lr=0.01")
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.01
    for name in ("config.yaml", "features.json", "model.safetensors", "model.json",
                 "contract.json", "metrics.json", "report.json", "embeddings/items.parquet",
                 "report/index.html"):  # train draws the run's report at the end
        assert (run / name).is_file(), name
    assert "hr@5" in r.output

    r = invoke("evaluate", run, "--split", "valid")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["split"] == "valid" and 0 <= m["hr@20"] <= 1 and m["requests"] > 0
    assert json.loads((run / "metrics.json").read_text())["split"] == "valid"
    assert_user_error(invoke("evaluate", run, "--split", "validation"), "'validation'")
    assert json.loads((run / "metrics.json").read_text())["split"] == "valid"

    (run / "embeddings" / "items.parquet").unlink()
    r = invoke("export", run)
    assert r.exit_code == 0, r.output
    assert (run / "embeddings" / "items.parquet").is_file()
    assert (run / "embeddings" / "queries.parquet").is_file()

    # the run folder exists now: a second train refuses with a clear message, touching nothing
    before = (run / "model.safetensors").read_bytes()
    assert_user_error(invoke("train", p), "already exists", "--resume", "--overwrite")
    assert (run / "model.safetensors").read_bytes() == before


def test_resume_with_a_config_is_refused_not_ignored(tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text("name: x\n")
    res = runner.invoke(app, ["train", str(cfg), "--resume", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert "not both" in res.output
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--set", "train.lr=1"])
    assert res.exit_code == 1 and "not both" in res.output
