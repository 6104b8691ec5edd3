"""Learned channel weights: the bandit moves weight to the better channel, replay, history file."""
import json

import numpy as np
import pyarrow as pa
import pytest

from twotower.channels.config import LearningConfig, MergeConfig
from twotower.channels.merge import Merger
from twotower.channels.weights import (ChannelBandit, WeightsFile, normalise, read_feedback,
                                       replay_reward)
from twotower.errors import ArtifactError, DataError


def feedback_round(rng, weights, ctr, n=400):
    """Show n items, each found by one channel drawn ∝ its weight; click with that channel's CTR."""
    names = list(ctr)
    p = np.array([weights[c] for c in names])
    chosen = rng.choice(len(names), n, p=p / p.sum())
    clicks = rng.random(n) < np.array([ctr[names[c]] for c in chosen])
    return read_feedback(pa.table({"request_id": np.arange(n), "item_id": np.arange(n),
                                   "channels": [[names[c]] for c in chosen],
                                   "click": clicks.astype(np.int8)}), LearningConfig())


@pytest.mark.parametrize("bandit", ["thompson", "ucb"])
def test_bandit_moves_weight_toward_the_better_channel(bandit):
    rng = np.random.default_rng(0)
    ctr = {"good": 0.12, "bad": 0.03, "mid": 0.06}
    b = ChannelBandit(list(ctr), LearningConfig(bandit=bandit, floor=0.05), seed=0)
    w = {c: 1.0 for c in ctr}
    shares = []
    for _ in range(15):
        b.update(feedback_round(rng, w, ctr))
        w = b.sample_weights()
        shares.append(w["good"] / sum(w.values()))
    final = b.weights()
    assert final["good"] > final["mid"] > final["bad"]
    assert final["bad"] >= 0.05 * 3 - 1e-9  # the floor keeps exploring
    assert np.mean(shares[-5:]) > 1 / 3 + 0.05
    assert sum(final.values()) == pytest.approx(3)


def test_attribution_credits_every_channel_that_found_the_item():
    fb = read_feedback(pa.table({"request_id": [1, 1, 2], "item_id": [5, 6, 5],
                                 "channels": ["a b", "b", "a"], "click": [1, 0, 0],
                                 "impression": [1, 1, 0]}), LearningConfig())
    b = ChannelBandit(["a", "b"], LearningConfig())
    b.update(fb)
    assert b.impressions.tolist() == [1.0, 2.0] and b.rewards.tolist() == [1.0, 1.0]
    with pytest.raises(DataError, match="'click'"):
        read_feedback(pa.table({"request_id": [1], "item_id": [1], "channels": ["a"]}), LearningConfig())


def test_normalise_floor_and_sum():
    w = normalise(np.array([1.0, 0.0, 0.0]), floor=0.1)
    assert w.sum() == pytest.approx(3) and w.min() == pytest.approx(0.3)
    assert normalise(np.array([0.0, 0.0])).tolist() == [1.0, 1.0]


def test_replay_prefers_the_setting_that_retrieves_clicked_items():
    one = lambda ids: ([list(ids)], [np.zeros(len(ids))])  # noqa: E731
    m = Merger(["a", "b"], MergeConfig(n=2, fetch_k=5), {"a": 1, "b": 1},
               {"a": "rrf", "b": "rrf"}, {"a": 5, "b": 5})
    answers = {"a": one([1, 2, 3]), "b": one([7, 8, 9])}
    outcomes = [{"7": 1.0, "8": 1.0, "1": 0.0}]
    to_b = replay_reward(m.merge(answers, 1, 2, weights={"a": 0.1, "b": 1.9}), outcomes)
    to_a = replay_reward(m.merge(answers, 1, 2, weights={"a": 1.9, "b": 0.1}), outcomes)
    assert to_b["reward_per_request"] == 2.0 and to_a["reward_per_request"] == 0.0
    assert to_a["matched_share"] == 0.5 and to_b["logged_reward_per_request"] == 2.0
    # unmatched items are not judged: one matched click of two shown items estimates 2 per request
    half = replay_reward([{"ids": [7, 42]}], [{"7": 1.0}])
    assert half["reward_per_request"] == 2.0 and half["logged_reward_per_request"] == 1.0


def test_weights_file_keeps_history_and_refuses_bad_content(tmp_path):
    f = WeightsFile(tmp_path / "w.json")
    assert f.current(["a"]) is None
    f.save({"a": 1.5, "b": 0.5}, {"a": {"impressions": 3, "rewards": 1}}, "round 1")
    f.save({"a": 1.0, "b": 1.0}, None, "round 2")
    data = json.loads((tmp_path / "w.json").read_text())
    assert [h["source"] for h in data["history"]] == ["round 1", "round 2"]
    assert data["stats"]["a"]["impressions"] == 3  # kept when a save brings none
    assert f.current(["a", "b"]) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ArtifactError, match="unknown channel"):
        f.current(["a"])
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        f.current(["a", "b"])
    assert not list(tmp_path.glob(".w.json.*"))  # atomic writes leave no temporaries
