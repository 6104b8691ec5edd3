"""The hard_negatives recipe end to end: mined from the current model, never a positive."""
from __future__ import annotations

import json

import pytest
import torch

from twotower.errors import ConfigError
from twotower.pipeline import train_run


def hn_config(tiny_config, path, **hn):
    return tiny_config(path, train={"epochs": 2},
                       objective={"name": "hard_negatives",
                                  "hard_negatives": {"window": [3, 40], "draws": 2, "online": 2,
                                                     "easy_negatives": 8, "warmup_epochs": 1, **hn}},
                       eval={"exclude_seen_by": "user_id"})


def test_hard_negative_run_mines_after_warmup_and_trains(tiny_config, tmp_path):
    summary = train_run(hn_config(tiny_config, tmp_path / "run"))
    report = json.loads((summary.run_dir / "report.json").read_text())
    assert report["hard_negatives"]["mined_epoch"] == 1
    assert report["hard_negatives"]["rows_with_mined"] > 0.9
    assert "recall@20" in summary.metrics


def test_mined_rows_avoid_every_item_of_the_rows_group(tiny_config, tmp_path):
    from twotower.ebr import MinedLog
    from twotower.features.feature_set import FeatureSet, feature_schema
    from twotower.models import build_model
    from twotower.runs import RunData

    cfg = hn_config(tiny_config, tmp_path / "m", draws=6)
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()), "train")
    corpus = data.corpus()
    log = data.train_source(True)
    source = MinedLog(log, corpus, cfg)
    source.model = build_model(cfg.model, feature_schema(features, cfg.model.embedding_dim))
    source.mine(1)
    rows, valid = source.mined
    users = log.raw["user_id"]
    for r in range(0, len(log), 7):
        group = set(source.row_item[users == users[r]].tolist())
        assert not group & set(rows[r][valid[r]].tolist())


def test_hard_negative_config_is_checked_before_the_run_folder(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="group_by"):
        train_run(hn_config(tiny_config, tmp_path / "bad", group_by="query_id"))
    assert not (tmp_path / "bad").exists()
