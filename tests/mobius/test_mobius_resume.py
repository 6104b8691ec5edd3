"""Resuming an interrupted MOBIUS run (`twotower train --resume RUN_DIR`) continues from its last
checkpoint and ends on the same weights as an uninterrupted run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from twotower.cli import app
from twotower.data.simulator import SimulatorConfig, simulate
from twotower.mobius import task as mobius_task
from twotower.pipeline import train_run
from twotower.presets import mobius_simulator_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mobius_resume") / "data"
    simulate(SimulatorConfig(n_impressions=6_000, n_ads=150, n_queries=80, n_users=50, seed=3), d)
    return d


def _cfg(data, run_dir):
    cfg = mobius_simulator_config(
        data, run_dir, train={"epochs": 2, "batch_size": 128, "progress": False, "seed": 0,
                              "checkpoint_every": 10, "threads": 1},
        eval={"ks": [10]},
        objective={"name": "mobius", "mobius": {"teacher": "lexical", "warmup_epochs": 0,
                                                "warmup_steps": 5, "max_bad_per_batch": 64}})
    for f in cfg.data.features:
        if f.kind.value == "text":
            f.num_buckets = 512
    return cfg


def test_interrupted_mobius_run_resumes_from_its_checkpoint(data, tmp_path, monkeypatch):
    full = train_run(_cfg(data, tmp_path / "full"))
    total = full.train.steps
    assert total > 25 and full.report["mobius"]["bad_cases_total"] > 0

    # interrupt a second run with an error at step 25 (the last checkpoint is step 20)
    original = mobius_task.MobiusTask.loss
    seen: list[int] = []

    def failing(self, model, batch, step):
        seen.append(step)
        if step == 25:
            raise RuntimeError("injected interruption")
        return original(self, model, batch, step)

    monkeypatch.setattr(mobius_task.MobiusTask, "loss", failing)
    with pytest.raises(RuntimeError, match="injected"):
        train_run(_cfg(data, tmp_path / "part"))
    assert not (tmp_path / "part" / "model.safetensors").exists()

    # resume through the CLI: the run folder's config.yaml picks the MOBIUS recipe
    seen.clear()
    # (training steps only: the validation loss calls the task in eval mode after each epoch)
    monkeypatch.setattr(mobius_task.MobiusTask, "loss",
                        lambda self, model, batch, step: (seen.append(step) if self.training else None)
                        or original(self, model, batch, step))
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "part")])
    assert res.exit_code == 0, res.output
    assert seen[0] == 20 and seen[-1] == total - 1  # continued from the step-20 checkpoint
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    report = json.loads((tmp_path / "part" / "report.json").read_text())
    assert report["mobius"]["bad_cases_total"] == full.report["mobius"]["bad_cases_total"]
    assert json.loads((tmp_path / "part" / "contract.json").read_text())["brw_weight"] == "bid"
