"""The validation loss of every epoch (metrics.jsonl ``valid.loss``) changes nothing in training:
same seed, the same loss at every step and the same weights with and without it — with dropout
(the global RNG), uniform negatives (a sampler's stream), SSL views, the log-Q estimator, and MOBIUS
mining bad cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import tiny_sections
from twotower.pipeline import train_run
from twotower.run import RunDir
from twotower.train.trainer import Trainer


def _mobius(sim_dir, run_dir, validation_batches: int):
    from twotower.presets import mobius_simulator_config

    sections = tiny_sections(validation_batches=validation_batches, batch_size=256)
    cfg = mobius_simulator_config(sim_dir, run_dir, model={"embedding_dim": 8, "hidden": [16],
                                                           "output_dim": 8},
                                  train=sections["train"], eval=sections["eval"],
                                  objective={"mobius": {"warmup_steps": 3, "max_bad_per_batch": 32}})
    for f in cfg.data.features:  # small hash tables keep the test fast
        if f.kind.value == "text":
            f.num_buckets = 1024
    return cfg


CASES = {
    "dropout+ssl": dict(model={"dropout": 0.3},
                        objective={"ssl": {"masking": "rfm", "batch_size": 16}}),
    "mixed_negatives": dict(objective={"name": "mixed_negatives", "uniform_negatives": 16}),
    "mobius": None,
}


def _train(tiny_config, sim_dir, run_dir, case: str, validation_batches: int):
    if CASES[case] is None:
        cfg = _mobius(sim_dir, run_dir, validation_batches)
    else:
        cfg = tiny_config(run_dir, train={"validation_batches": validation_batches}, **CASES[case])
    summary = train_run(cfg)
    records = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_is_identical_with_and_without_validation_loss(tiny_config, sim_dir, tmp_path,
                                                                 monkeypatch, case):
    monkeypatch.setattr(Trainer, "LOG_EVERY", 1)  # every step's loss in metrics.jsonl
    on, on_log = _train(tiny_config, sim_dir, tmp_path / "on", case, 4)
    off, off_log = _train(tiny_config, sim_dir, tmp_path / "off", case, 0)
    steps = lambda log: [(r["step"], r["loss"]) for r in log if "loss" in r]  # noqa: E731
    assert len(steps(on_log)) > 5 and steps(on_log) == steps(off_log)
    epochs_on = [r for r in on_log if "train_loss" in r]
    epochs_off = [r for r in off_log if "train_loss" in r]
    assert [r["train_loss"] for r in epochs_on] == [r["train_loss"] for r in epochs_off]
    losses = [r["valid"]["loss"] for r in epochs_on]
    assert len(losses) == 2 and all(np.isfinite(losses) & (np.array(losses) > 0))
    assert losses[0] != losses[1]  # measured on the model of each epoch
    assert all("loss" not in r.get("valid", {}) for r in epochs_off)
    a, b = load_file(str(RunDir(on.run_dir).weights)), load_file(str(RunDir(off.run_dir).weights))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    if case == "mobius":
        assert on.report["mobius"]["bad_cases_total"] == off.report["mobius"]["bad_cases_total"] > 0


def test_validation_loss_puts_back_the_modes_and_uses_bounded_fixed_batches(tiny_config, tmp_path):
    from twotower.features.feature_set import FeatureSet, feature_schema
    from twotower.models import build_model
    from twotower.objectives.tasks import build_task
    from twotower.runs import RunData

    cfg = tiny_config(tmp_path / "r", train={"batch_size": 4})
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()))
    rows_before = features.rows_encoded
    batches = data.validation_batches(True, 4, 3, seed=0)
    assert [len(b) for b in batches] == [4, 4, 4]  # bounded: 3 batches of the training size
    assert features.rows_encoded == rows_before  # read again: not counted as data
    again = data.validation_batches(True, 4, 3, seed=0)
    assert all(np.array_equal(x.item_ids, y.item_ids) for x, y in zip(batches, again))
    one = data.validation_batches(True, 10_000, 3, seed=0)  # split smaller than a batch: one batch
    assert len(one) == 1 and len(one[0]) < 10_000
    model = build_model(cfg.model, feature_schema(features, cfg.model.embedding_dim))
    task = build_task(cfg.objective, None, features.item_id, 0)
    trainer = Trainer(model, task, cfg.train)
    model.train()
    task.eval()  # whatever the modes were, they come back
    loss = trainer.validation_loss(batches)
    assert model.training and not task.training
    assert loss == trainer.validation_loss(batches) and np.isfinite(loss)
    assert not any(p.grad is not None for p in model.parameters())
    assert data.validation_batches(True, 4, 0) == []
