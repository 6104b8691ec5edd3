"""DMTL (objective.name: dmtl): the teacher, the soft labels and the one-run recipe."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower.config import DMTLConfig, ObjectiveConfig
from twotower.consistency.dmtl import DMTLTask, engagement_targets, length_debias
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.models.ranker import MultiTaskRanker, pair_grid
from twotower.pipeline import train_run
from twotower.types import Batch


def dmtl_config(tiny_config, sim_dir, path, train=None, **dmtl):
    from twotower.config import merge
    from twotower.presets import simulator_config
    from conftest import tiny_sections

    d = {"engagement": "dwell", "length_column": "page_length", "candidates": 8,
         "teacher_epochs": 1, "teacher_batch_size": 256, "teacher_hidden": [16], "teacher_cross_dim": 8,
         **dmtl}
    sections = merge(tiny_sections(**(train or {"epochs": 1})), {"objective": {"name": "dmtl", "dmtl": d}})
    return simulator_config(sim_dir, path, **sections)


def test_length_debias_removes_the_length_effect_and_keeps_quality():
    rng = np.random.default_rng(0)
    length = rng.lognormal(0, 0.5, 4000)
    quality = rng.integers(1, 3, 4000).astype(float)  # 1 or 2
    duration = length * quality * 10
    debiased, buckets = length_debias(duration, length, 20)
    assert abs(np.corrcoef(np.log(duration), np.log(length))[0, 1]) > 0.5
    # within quality, the debiased duration hardly depends on length any more
    for qv in (1.0, 2.0):
        sel = quality == qv
        assert abs(np.corrcoef(debiased[sel], length[sel])[0, 1]) < 0.25
    assert debiased[quality == 2].mean() > 1.6 * debiased[quality == 1].mean()
    assert len(buckets["mean_duration"]) == len(buckets["edges"]) + 1


def test_engagement_targets_refuse_a_non_binary_signal_declared_binary():
    with pytest.raises(DataError, match="binary"):
        engagement_targets(DMTLConfig(engagement="conversion", engagement_kind="binary"),
                           np.array([0.0, 1.0, 2.0]), None)
    y, _ = engagement_targets(DMTLConfig(), np.array([0.0, 5.0, 10.0]), None)
    assert 0 <= y.min() and y.max() < 1 and (np.diff(y) > 0).all()


def tiny_schema():
    from twotower.types import FeatureKind, FieldSpec as Spec, Side

    return {"u": Spec(FeatureKind.CATEGORICAL, Side.QUERY, 20, "u", 4),
            "i": Spec(FeatureKind.CATEGORICAL, Side.ITEM, 30, "i", 4)}


def test_grid_scores_equal_teacher_scores_of_the_pair_grid():
    torch.manual_seed(0)
    ranker = MultiTaskRanker(tiny_schema(), [8], 4).eval()
    query = {"u": torch.randint(1, 20, (6,))}
    item = {"i": torch.randint(1, 30, (6,))}
    cols = torch.randint(0, 6, (6, 4))
    fast = ranker.grid_scores(query, item, cols, 0.7)
    q, i = pair_grid(query, item, cols)
    torch.testing.assert_close(fast, ranker.teacher_scores(q, i, 0.7).reshape(6, 4))


class FixedModel(torch.nn.Module):
    """Scores given directly (a [B, B] matrix), so the loss can be checked by hand."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def logits(self, q, i):
        return self.scores


def make_task(**dmtl):
    cfg = ObjectiveConfig(name="dmtl", temperature=0.5, logq_correction=False,
                          dmtl=DMTLConfig(**dmtl))
    task = DMTLTask(cfg, "i", 0)
    torch.manual_seed(1)
    task.attach(MultiTaskRanker(tiny_schema(), [8], 4), None)
    return task


def batch_of(b):
    return Batch(query={"u": torch.arange(1, b + 1)}, item={"i": torch.arange(1, b + 1)},
                 item_ids=torch.arange(1, b + 1))


def test_distillation_term_is_the_cross_entropy_to_the_teachers_distribution():
    b = 6
    task = make_task(hard_weight=0.0, candidates=None, temperature=2.0)
    scores = torch.randn(b, b)
    batch = batch_of(b)
    loss, _ = task.objective_loss(FixedModel(scores), batch, 0, None, None)
    cols = (torch.arange(b)[:, None] + torch.arange(b)[None, :]) % b
    teacher = task.teacher.grid_scores(batch.query, batch.item, cols)
    student = (scores / 0.5).gather(1, cols)
    p = F.softmax(teacher / 2.0, 1)
    expected = -(p * F.log_softmax(student / 2.0, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    # KL reports the same loss minus the teacher's entropy: same gradients
    kl = make_task(hard_weight=0.0, candidates=None, temperature=2.0, loss="kl")
    kl_loss, _ = kl.objective_loss(FixedModel(scores), batch, 0, None, None)
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(kl_loss, expected - entropy)


def test_hard_weight_mixes_the_log_q_softmax_and_the_soft_labels():
    from twotower.objectives.losses import in_batch_softmax

    b = 5
    scores = torch.randn(b, b)
    batch = batch_of(b)
    soft_only, _ = make_task(hard_weight=0.0, candidates=None).objective_loss(FixedModel(scores), batch, 0, None, None)
    mixed, _ = make_task(hard_weight=0.3, candidates=None).objective_loss(FixedModel(scores), batch, 0, None, None)
    hard = in_batch_softmax(scores / 0.5, batch.item_ids, None, None, remove_hits=True)
    torch.testing.assert_close(mixed, 0.3 * hard + 0.7 * soft_only)


def test_sampled_candidates_start_with_the_rows_item_and_never_repeat_it():
    task = make_task(candidates=4)
    cols = task.candidate_columns(10, "cpu")
    assert cols.shape == (10, 4)
    assert (cols[:, 0] == torch.arange(10)).all()
    for r in range(10):
        assert len(set(cols[r].tolist())) == 4


def test_one_run_trains_the_teacher_then_the_student_and_saves_the_teacher(
        tiny_config, funnel_sim_dir, tmp_path):
    summary = train_run(dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "run", value_column="bid"))
    folder = summary.run_dir / "teacher"
    assert (folder / "ranker.safetensors").is_file()
    meta = json.loads((folder / "ranker.json").read_text())
    assert meta["engagement"] == "dwell" and meta["length_column"] == "page_length"
    report = json.loads((summary.run_dir / "report.json").read_text())
    teacher = report["dmtl"]["teacher"]
    assert teacher["source"] == "trained" and teacher["clicked"] > 0
    assert teacher["impressions"] > teacher["clicked"]  # the CTR head saw the unclicks too
    assert "length_buckets" in teacher and "recall@20" in summary.metrics
    # a second run loads that teacher instead of training one: same weights, saved in its folder
    from safetensors.torch import load_file

    again = train_run(dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "again",
                                  teacher=str(summary.run_dir)))
    rep = json.loads((again.run_dir / "report.json").read_text())["dmtl"]["teacher"]
    assert rep["source"] == str(summary.run_dir)
    a = load_file(str(folder / "ranker.safetensors"))
    b = load_file(str(again.run_dir / "teacher" / "ranker.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a teacher fitted on other features is refused, naming the reason
    from twotower.config import merge

    other = dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "other", teacher=str(summary.run_dir))
    raw = other.model_dump(mode="json")
    raw["data"]["features"] = [f for f in raw["data"]["features"] if f["name"] != "advertiser_id"]
    from twotower.config import validate_config

    with pytest.raises(ArtifactError, match="other fitted features"):
        train_run(validate_config(merge(raw, {}), "test"), overwrite=True)


def test_dmtl_config_errors_are_clear(tiny_config, funnel_sim_dir, tmp_path):
    cfg = dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "a", candidates=64)
    with pytest.raises(ConfigError, match="candidates"):
        train_run(cfg)
    cfg = dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "b", engagement_kind="binary")
    with pytest.raises(ConfigError, match="length_column"):
        train_run(cfg)
    raw = dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "c").model_dump(mode="json")
    raw["data"]["label"] = None
    from twotower.config import validate_config

    with pytest.raises(ConfigError, match="data.label"):
        train_run(validate_config(raw, "test"))
    with pytest.raises(ConfigError, match="does not exist"):
        train_run(dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "d", teacher=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="watch_time"):
        train_run(dmtl_config(tiny_config, funnel_sim_dir, tmp_path / "e", engagement="watch_time"))
    assert not any((tmp_path / n).exists() for n in "abcde")
