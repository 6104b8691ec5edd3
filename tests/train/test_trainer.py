"""Trainer: seeded determinism, checkpoints and exact resume (also after SIGKILL), corrupt
checkpoints, early stopping, metrics.jsonl."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from twotower.config import dump_config
from twotower.errors import ArtifactError
from twotower.features.feature_set import FeatureSet, feature_schema
from twotower.models import build_model
from twotower.objectives.tasks import build_task
from twotower.pipeline import train_run
from twotower.runs import RunData
from twotower.run import RunDir
from twotower.train.checkpoint import list_checkpoints
from twotower.train.trainer import Trainer

TWOTOWER = Path(sys.executable).parent / "twotower"


def weights(path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def build(cfg, run_dir: Path | None):
    """What train_run does before fitting, without evaluation/export (fast)."""
    from twotower.train.trainer import seed_everything

    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()))
    corpus = data.corpus()
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, feature_schema(features, cfg.model.embedding_dim))
    task = build_task(cfg.objective, corpus.features if cfg.objective.uniform_negatives else None,
                      features.item_id, cfg.train.seed)
    train = data.train_source(task.positives_only)
    run = RunDir(run_dir).ensure() if run_dir is not None else None
    return Trainer(model, task, cfg.train, run), train


def test_seeded_determinism_in_one_process(tiny_config, tmp_path):
    a = train_run(tiny_config(tmp_path / "a", train={"epochs": 1}))
    b = train_run(tiny_config(tmp_path / "b", train={"epochs": 1}))
    assert_same_weights(RunDir(a.run_dir).weights, RunDir(b.run_dir).weights)
    c = train_run(tiny_config(tmp_path / "c", train={"epochs": 1, "seed": 1}))
    assert not np.array_equal(weights(RunDir(a.run_dir).weights)["embedding.tables.ad_id.weight"],
                              weights(RunDir(c.run_dir).weights)["embedding.tables.ad_id.weight"])


@pytest.mark.parametrize("objective", [
    {"name": "in_batch_softmax"},
    {"name": "mixed_negatives", "uniform_negatives": 16},
])
def test_checkpoint_resume_equals_uninterrupted(tiny_config, tmp_path, objective):
    full_cfg = tiny_config(tmp_path / "full", train={"epochs": 2, "checkpoint_every": 4, "batch_size": 8},
                           objective=objective)
    trainer, data = build(full_cfg, tmp_path / "full")
    n = data.num_batches(full_cfg.train.batch_size)
    assert n > 8
    trainer.fit(data)
    # interrupted: stop mid-epoch 2 right after a checkpoint, then resume in a fresh Trainer
    stop_at = 4 * ((n + n // 2) // 4)
    part_cfg = full_cfg.model_copy(update={"train": full_cfg.train.model_copy(
        update={"max_steps": stop_at})})
    t1, data1 = build(part_cfg, tmp_path / "part")
    t1.fit(data1)
    assert t1.step == stop_at and t1.epoch == 1
    t2, data2 = build(full_cfg, tmp_path / "part")
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    t2.fit(data2, resume=True)
    assert t2.step == trainer.step
    assert_same_weights(tmp_path / "full" / "model.safetensors",
                        tmp_path / "part" / "model.safetensors")
    # the task state (frequency estimator arrays) is restored too
    for k, v in trainer.task.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, t2.task.state_dict()[k]), k


def test_kill_and_resume_from_cli(tiny_config, tmp_path):
    """SIGKILL a `twotower train` run once a checkpoint exists, resume it, compare weights."""
    def config_file(name):
        cfg = tiny_config(tmp_path / name, train={"epochs": 2, "batch_size": 8,
                                                  "checkpoint_every": 3})
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        return path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from twotower.config import load_config

    train_run(load_config(config_file("full")))  # uninterrupted, in this process
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(TWOTOWER), "train", str(config_file("killed"))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list_checkpoints(killed / "checkpoints")) >= 1:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    res = subprocess.run([str(TWOTOWER), "train", "--resume", str(killed)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert_same_weights(tmp_path / "full" / "model.safetensors", killed / "model.safetensors")
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert json.loads((killed / "metrics.json").read_text()) == full_metrics


def test_corrupt_checkpoint_gives_one_clear_error_and_deletes_nothing(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 1, "checkpoint_every": 3})
    trainer, data = build(cfg, tmp_path / "run")
    trainer.fit(data)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert ckpts
    newest = ckpts[-1]
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(blob))
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*"))
    t2, data2 = build(cfg, tmp_path / "run")
    with pytest.raises(ArtifactError) as e:
        t2.fit(data2, resume=True)
    assert str(newest) in str(e.value) and "corrupt" in str(e.value)
    after = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*"))
    assert before == after
    # a truncated trainer state is also an ArtifactError (checksum catches it first)
    (newest / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        build(cfg, tmp_path / "run")[0].fit(data2, resume=True)


def test_early_stopping_after_patience(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 10, "early_stopping_patience": 2})
    trainer, data = build(cfg, tmp_path / "run")
    scores = iter([0.5, 0.4, 0.6, 0.6, 0.3, 0.9, 0.9])
    calls = []

    def validate(model):
        calls.append(1)
        return {"m": next(scores)}

    result = trainer.fit(data, validate, "m")
    assert len(calls) == 5 and result.epochs_run == 5  # best at epoch 2, then 2 bad epochs
    assert result.best_metric == 0.6 and result.best_epoch == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if "valid" in r]
    assert [r["valid"]["m"] for r in epochs] == [0.5, 0.4, 0.6, 0.6, 0.3]
    assert all("train_loss" in r and np.isfinite(r["train_loss"]) for r in epochs)
    # the final weights are the best epoch's
    assert_same_weights(tmp_path / "run" / "best.safetensors", tmp_path / "run" / "model.safetensors")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_train_evaluate_and_cpu_reload(tiny_config, tmp_path):
    from twotower.runs import load_model

    summary = train_run(tiny_config(tmp_path / "run", train={"epochs": 2, "device": "cuda",
                                                             "amp": True}))
    assert 0.0 <= summary.metrics["hr@20"] <= 1.0
    assert all(np.isfinite(r["train_loss"]) for r in summary.train.history if "train_loss" in r)
    model = load_model(RunDir(summary.run_dir))  # weights saved on CPU, reload without CUDA
    assert next(model.parameters()).device.type == "cpu"
    # resume on CUDA from the last checkpoint restores without error
    shutil.rmtree(tmp_path / "run" / "embeddings")
    again = train_run(resume_dir=tmp_path / "run")
    assert again.metrics["hr@20"] == pytest.approx(summary.metrics["hr@20"])


def test_resuming_an_early_stopped_run_trains_no_more(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 10, "early_stopping_patience": 1})
    trainer, data = build(cfg, tmp_path / "run")
    scores = iter([0.5, 0.4])
    trainer.fit(data, lambda m: {"m": next(scores)}, "m")
    assert trainer.epoch == 2
    final = weights(tmp_path / "run" / "model.safetensors")
    t2, data2 = build(cfg, tmp_path / "run")
    called = []
    t2.fit(data2, lambda m: called.append(1) or {"m": 1.0}, "m", resume=True)
    assert called == [] and t2.epoch == 2 and t2.step == trainer.step
    after = weights(tmp_path / "run" / "model.safetensors")
    for k in final:
        np.testing.assert_array_equal(final[k], after[k])


def test_max_steps_stop_is_logged_and_checkpointed(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"epochs": 3, "batch_size": 8, "max_steps": 7,
                                               "checkpoint_every": 1000})
    trainer, data = build(cfg, tmp_path / "run")
    trainer.fit(data)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["stopped"] == "max_steps" and records[-1]["step"] == 7
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name.endswith("7")


def test_train_threads_apply_during_fit_only(tiny_config, tmp_path):
    """``train.threads`` is the thread count of training (and its validation), not a process-wide
    side effect: the caller's count is back when fit returns."""
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    trainer, train = build(tiny_config(tmp_path / "r", train={"epochs": 1, "threads": want}), None)
    seen = []
    trainer.fit(train, validate=lambda model: seen.append(torch.get_num_threads()) or {})
    assert seen == [want]
    assert torch.get_num_threads() == before
