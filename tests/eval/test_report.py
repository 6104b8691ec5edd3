"""`twotower report`: the plots and the self-contained HTML page of a run, checked against the
run's own numbers and rendered in headless chromium."""
import json
import re

import pytest
from typer.testing import CliRunner

from browser import chromium_driver, save_screenshot
from twotower.cli import app
from twotower.config import dump_config
from twotower.index.run_index import build_run_index

runner = CliRunner()


@pytest.fixture(scope="module")
def dssm_run(tmp_path_factory, sim_dir):
    from conftest import tiny_sections
    from twotower.presets import simulator_config

    root = tmp_path_factory.mktemp("report")
    cfg = simulator_config(sim_dir, root / "runs" / "dssm", **tiny_sections(epochs=2))
    (root / "cfg.yaml").write_text(dump_config(cfg))
    r = runner.invoke(app, ["--quiet", "train", str(root / "cfg.yaml"), "--no-report"])
    assert r.exit_code == 0, r.output
    run = root / "runs" / "dssm"
    assert not (run / "report").exists()  # --no-report
    build_run_index(run, "flat")
    build_run_index(run, "ivf-flat", {"nlist": 4, "nprobe": 1})
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    return run, json.loads(r.output)


def test_report_plots_match_the_run(dssm_run):
    run, out = dssm_run
    assert out["plots"] == ["training.png", "metrics_at_k.png", "popularity.png", "coverage.png",
                            "index_recall_qps.png"]
    for name in out["plots"]:
        data = (run / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    rep = json.loads((run / "report" / "report.json").read_text())
    sec = {s["title"]: s for s in rep["sections"]}
    metrics = json.loads((run / "metrics.json").read_text())
    pop = sec["Coverage and popularity of retrieved items"]["data"]
    # the report re-ranks the same test requests: its coverage is the evaluation's
    assert pop["coverage"] == pytest.approx([metrics[f"coverage@{k}"] for k in pop["ks"]])
    assert 0 <= pop["head_share"][0] <= 1 and 0.2 <= pop["head_interaction_share"] <= 1
    assert sec["Training"]["data"]["epochs"] == 2
    # the loss plot draws the validation loss of every epoch beside the training loss
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in line]
    assert sec["Training"]["data"]["valid_loss"] == [r["valid"]["loss"] for r in epochs]
    assert len(sec["Training"]["data"]["valid_loss"]) == 2
    assert sec["Training"]["data"]["train_loss"] == [r["train_loss"] for r in epochs]
    kinds = {k["kind"]: k for k in sec["Index: recall vs queries/s"]["data"]["kinds"]}
    assert set(kinds) == {"flat", "ivf-flat"}
    assert kinds["flat"]["recall@10"] == pytest.approx(1.0)  # exact kind = exact search
    assert kinds["ivf-flat"]["recall@10"] < 1.0  # 1 of 4 lists probed misses neighbours
    page = (run / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(out["plots"])
    assert not re.search(r"""(src|href)=['"]?https?:""", page)  # nothing fetched: renders offline


def test_report_page_in_headless_chromium(dssm_run, tmp_path):
    from selenium.webdriver.common.by import By

    run, out = dssm_run
    driver = chromium_driver(tmp_path / "profile")
    try:
        driver.set_window_size(1100, 3000)
        driver.get((run / "report" / "index.html").resolve().as_uri())
        heads = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        assert heads == ["Training", "Metrics at every K", "Coverage and popularity of retrieved items",
                         "Index: recall vs queries/s"]
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == len(out["plots"]) and all(w > 300 for w in widths)  # all decoded
        save_screenshot(driver, tmp_path / "report.png")
    finally:
        driver.quit()


def test_mobius_report_has_bad_cases_and_relevance_vs_cpm(tmp_path, sim_dir):
    from conftest import tiny_sections
    from twotower.eval.report import write_report
    from twotower.pipeline import train_run
    from twotower.presets import mobius_simulator_config

    secs = tiny_sections(epochs=1)
    cfg = mobius_simulator_config(sim_dir, tmp_path / "mobius", **secs, objective={
        "name": "mobius", "mobius": {"bad_cases": "active", "teacher": "lexical",
                                     "max_bad_per_batch": 64, "warmup_steps": 5}})
    train_run(cfg, overwrite=True)
    rep = write_report(tmp_path / "mobius", max_searches=100)
    assert {"mobius_bad_cases.png", "mobius_relevance_cpm.png"} <= set(rep.plots)
    mob = next(s for s in rep.sections if s.title == "MOBIUS")
    assert 0 < mob.data["bad_cases_per_step_mean"] <= 64
    rows = mob.data["retrieval"]
    assert {"mobius (this run)", "mobius + BRW", "relevance only (lexical teacher)"} <= set(rows)
    assert all(0 <= r["relevant@5"] <= 1 and r["cpm@5"] >= 0 for r in rows.values())


def test_report_of_a_non_run_is_one_clear_error(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "not a run folder" in r.output
