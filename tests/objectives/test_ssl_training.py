"""SSL and multi-objective weights through the one training pipeline (any model, any objective)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from twotower.errors import ConfigError, DataError, TwoTowerError
from twotower.pipeline import train_run


@pytest.mark.parametrize("model, masking", [("dssm", "cfm"), ("senet", "crfm")])
def test_ssl_trains_with_any_model_and_logs_its_loss(tiny_config, tmp_path, model, masking, monkeypatch):
    from twotower.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "LOG_EVERY", 1)
    cfg = tiny_config(tmp_path / "run", train={"epochs": 1},
                      model={"name": model},
                      objective={"ssl": {"masking": masking, "batch_size": 64, "weight": 0.5}})
    summary = train_run(cfg)
    logs = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    ssl = [r["ssl_loss"] for r in logs if "ssl_loss" in r]
    assert ssl and all(np.isfinite(ssl))
    assert "recall@20" in summary.metrics


def test_weight_expression_weighs_examples_and_refuses_unknown_columns(tiny_config, tmp_path):
    from twotower.runs import RunData

    cfg = tiny_config(tmp_path / "w", train={"epochs": 1},
                      data={"weight_expression": "1 + 0.5*log1p(dwell) + 2*conversion"})
    data = RunData(cfg, __import__("twotower.features.feature_set", fromlist=["FeatureSet"])
                   .FeatureSet(cfg.data.features, cfg.data.item_id))
    data.features.fit(data.reader.chunks("train", data.features.columns()), "train")
    log = data.train_source(positives_only=True)
    assert log.weight is not None and log.weight.min() >= 1.0 and log.weight.max() > 1.5
    train_run(cfg)
    bad = tiny_config(tmp_path / "bad", data={"weight_expression": "1 + dwel"})
    with pytest.raises(ConfigError, match="unknown column 'dwel'"):
        train_run(bad)
    assert not (tmp_path / "bad").exists()  # refused before the run folder was made
    with pytest.raises(TwoTowerError, match="not both"):
        tiny_config(tmp_path / "x", data={"weight_expression": "dwell", "weight": "bid"})
