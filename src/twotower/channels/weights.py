"""Channel weights learned from feedback, evaluated offline by replay before they go live.

A feedback log has one row per item shown: the request id, the item, the channels that found it
(the attribution the merge returned), an impression flag (default 1), a click and optionally a
conversion. Each channel is credited with every impression of an item it found and with that
item's reward (attributed rewards). Two bandits turn the credits into weights:

* ``thompson``: a Beta(prior + rewards, prior + impressions - rewards) posterior per channel
  (Thompson, 1933; Chapelle & Li, NIPS 2011); a round's weights come from one posterior draw each
  (``sample_weights``), the saved weights from the posterior means;
* ``ucb``: mean reward + c * sqrt(2 ln(total) / impressions) (UCB1, Auer et al., 2002).

Weights are proportional to the estimate^sharpness, each channel keeps at least ``floor`` of the
total, and they sum to the number of channels (all equal = every weight 1, the config default).
``replay`` evaluates a weight setting on a held-out log: the channels answer each logged request
once, the merge re-runs with the candidate weights, and the reward is what the log recorded for
the items of its top N (the replay method of Li et al., WSDM 2011; items the log never showed earn
are not judged: the estimate is the mean reward of the matched items times the list length). ``WeightsFile`` keeps the current weights
with their history beside the channel config (atomic writes); the service reloads it on
``/admin/reload`` without a restart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from twotower.channels.config import Bandit, ChannelsConfig, LearningConfig
from twotower.errors import ArtifactError, DataError

WEIGHTS_FORMAT_VERSION = 1


@dataclass
class Feedback:
    """A feedback log as arrays: request code, item id, attributed channels, impression, reward."""

    request: np.ndarray
    items: list
    channels: list[list[str]]
    impression: np.ndarray
    reward: np.ndarray
    table: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.items)


def _channel_lists(col: pa.ChunkedArray | pa.Array) -> list[list[str]]:
    vals = col.to_pylist()
    out = []
    for v in vals:
        if v is None:
            out.append([])
        elif isinstance(v, str):
            out.append([x for x in v.replace(",", " ").split() if x])
        else:
            out.append([str(x) for x in v])
    return out


def read_feedback(source: str | Path | pa.Table, learning: LearningConfig) -> Feedback:
    """Read a feedback log (Parquet / CSV path or a table); errors name the column."""
    if isinstance(source, pa.Table):
        t, where = source, "feedback table"
    else:
        from twotower.data.readers import TableSource

        if not Path(source).is_file():
            raise DataError(f"feedback log {source} not found")
        src = TableSource(source)
        t, where = src.read(src.columns), str(source)
    need = [learning.request_column, learning.item_column, learning.channels_column,
            learning.reward]
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise DataError(f"{where}: missing column {', '.join(map(repr, missing))} (a feedback log "
                        f"needs {', '.join(need)}; impression optional)")
    if t.num_rows == 0:
        raise DataError(f"{where}: no rows")
    _, req = np.unique(np.asarray(t[learning.request_column].to_pylist(), dtype=object).astype(str),
                       return_inverse=True)
    imp = (t["impression"].cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
           if "impression" in t.column_names else np.ones(t.num_rows))
    rew = t[learning.reward].cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    return Feedback(req, t[learning.item_column].to_pylist(),
                    _channel_lists(t[learning.channels_column]), imp, rew * (imp > 0), t)


def attributed_counts(fb: Feedback, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(impressions, rewards) credited to each channel: every channel that found an item gets
    its impression and its reward."""
    index = {n: i for i, n in enumerate(names)}
    rows, cols = [], []
    for r, chans in enumerate(fb.channels):
        for c in chans:
            if c in index:
                rows.append(r)
                cols.append(index[c])
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    imp = np.bincount(cols, weights=fb.impression[rows], minlength=len(names))
    rew = np.bincount(cols, weights=fb.reward[rows], minlength=len(names))
    return imp, rew


def normalise(estimate: np.ndarray, sharpness: float = 1.0, floor: float = 0.0) -> np.ndarray:
    """Weights ∝ estimate^sharpness with each at least ``floor`` of the total; sum = count."""
    e = np.maximum(np.asarray(estimate, dtype=np.float64), 0.0) ** sharpness
    c = len(e)
    share = e / e.sum() if e.sum() > 0 else np.full(c, 1.0 / c)
    floor = min(floor, 1.0 / c)
    share = floor + (1.0 - c * floor) * share
    return share * c


class ChannelBandit:
    """Per-channel attributed reward statistics and the weights they imply."""

    def __init__(self, names: Sequence[str], learning: LearningConfig, seed: int = 0,
                 impressions: np.ndarray | None = None, rewards: np.ndarray | None = None):
        self.names = list(names)
        self.cfg = learning
        self.rng = np.random.default_rng(seed)
        self.impressions = np.zeros(len(names)) if impressions is None else np.asarray(impressions, float)
        self.rewards = np.zeros(len(names)) if rewards is None else np.asarray(rewards, float)

    def update(self, fb: Feedback) -> None:
        imp, rew = attributed_counts(fb, self.names)
        self.impressions += imp
        self.rewards += np.minimum(rew, imp) if self.cfg.reward == "click" else rew

    def _posterior(self) -> tuple[np.ndarray, np.ndarray]:
        a0, b0 = self.cfg.prior
        return a0 + self.rewards, b0 + np.maximum(self.impressions - self.rewards, 0.0)

    def estimate(self) -> np.ndarray:
        """Posterior mean (Thompson) or upper confidence bound (UCB) of each channel's reward."""
        if self.cfg.bandit == Bandit.THOMPSON:
            a, b = self._posterior()
            return a / (a + b)
        mean = self.rewards / np.maximum(self.impressions, 1.0)
        total = max(self.impressions.sum(), 1.0)
        bonus = self.cfg.ucb_c * np.sqrt(2.0 * np.log(total) / np.maximum(self.impressions, 1.0))
        return np.where(self.impressions > 0, mean + bonus, np.inf)

    def weights(self) -> dict[str, float]:
        e = self.estimate()
        if np.isinf(e).any():  # UCB: a channel never tried is tried first
            e = np.isinf(e).astype(float)
        return dict(zip(self.names, normalise(e, self.cfg.sharpness, self.cfg.floor).tolist()))

    def sample_weights(self) -> dict[str, float]:
        """One round's weights: a Thompson draw from each posterior (UCB: the bound itself)."""
        if self.cfg.bandit != Bandit.THOMPSON:
            return self.weights()
        a, b = self._posterior()
        theta = self.rng.beta(a, b)
        return dict(zip(self.names, normalise(theta, self.cfg.sharpness, self.cfg.floor).tolist()))

    def stats(self) -> dict[str, dict[str, float]]:
        return {n: {"impressions": float(i), "rewards": float(r)}
                for n, i, r in zip(self.names, self.impressions, self.rewards)}


# ------------------------------------------------------------------ the weights file
class WeightsFile:
    """``weights.json``: current weights, the bandit's statistics and every earlier setting."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        from twotower.run import read_json_artifact

        data = read_json_artifact(self.path, "channel weights", format_version=WEIGHTS_FORMAT_VERSION)
        w = data.get("current")
        if not isinstance(w, dict) or not all(isinstance(v, (int, float)) and v >= 0
                                               for v in w.values()):
            raise ArtifactError(f"{self.path}: `current` must map channel names to weights >= 0")
        return data

    def current(self, names: Sequence[str]) -> dict[str, float] | None:
        data = self.read()
        if data is None:
            return None
        unknown = sorted(set(data["current"]) - set(names))
        if unknown:
            raise ArtifactError(f"{self.path}: weights for unknown channel(s) {', '.join(unknown)}")
        return {n: float(data["current"].get(n, 0.0)) for n in names}

    def save(self, weights: dict[str, float], stats: dict | None = None, source: str = "",
             metrics: dict | None = None) -> dict:
        from twotower.run import atomic_write_json

        old = self.read() or {"format_version": WEIGHTS_FORMAT_VERSION, "history": []}
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "weights": weights, "source": source}
        if stats is not None:
            entry["stats"] = stats
        if metrics is not None:
            entry["replay"] = metrics
        data = {"format_version": WEIGHTS_FORMAT_VERSION, "current": weights,
                "stats": stats if stats is not None else old.get("stats"),
                "history": old.get("history", []) + [entry]}
        atomic_write_json(self.path, data)
        return data


def bandit_from_file(cfg: ChannelsConfig, seed: int = 0) -> ChannelBandit:
    """A bandit resumed from the weights file's saved statistics (fresh when there are none)."""
    names = [c.name for c in cfg.channels]
    data = WeightsFile(cfg.weights_path).read()
    stats = (data or {}).get("stats") or {}
    imp = np.array([stats.get(n, {}).get("impressions", 0.0) for n in names])
    rew = np.array([stats.get(n, {}).get("rewards", 0.0) for n in names])
    return ChannelBandit(names, cfg.learning, seed, imp, rew)


# ------------------------------------------------------------------ replay
def logged_requests(fb: Feedback, fields: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(one request dict per logged request with the ``fields`` the log has, and per request
    {item key: reward}) from a feedback log that carries the request fields."""
    t = fb.table
    have = [f for f in fields if t is not None and f in t.column_names]
    n_req = int(fb.request.max()) + 1
    first = np.full(n_req, -1)
    first[fb.request[::-1]] = np.arange(len(fb))[::-1]
    cols = {f: t[f].to_pylist() for f in have}
    requests = [{f: cols[f][i] for f in have} for i in first.tolist()]
    outcomes: list[dict] = [dict() for _ in range(n_req)]
    for r, item, imp, rew in zip(fb.request.tolist(), fb.items, fb.impression.tolist(),
                                 fb.reward.tolist()):
        if imp > 0:
            d = outcomes[r]
            d[str(item)] = d.get(str(item), 0.0) + rew
    return requests, outcomes


def replay_reward(merged: list[dict], outcomes: list[dict]) -> dict[str, float]:
    """Replay of merged results against logged outcomes.

    ``reward_per_request``: the replay estimate — mean reward of the merged items the log had
    shown (only matched items are judged, Li et al.) times the mean list length, so a setting is
    not penalised for choosing items the logging policy did not show; ``logged_reward_per_request``:
    the logged reward its lists contain; ``matched_share``: how much of the setting the log judges.
    """
    total, matched, shown = 0.0, 0, 0
    for res, out in zip(merged, outcomes):
        for x in res["ids"]:
            key = str(x)
            shown += 1
            if key in out:
                matched += 1
                total += out[key]
    n = max(len(merged), 1)
    per_matched = total / matched if matched else 0.0
    return {"reward_per_request": per_matched * shown / n, "reward_per_matched": per_matched,
            "logged_reward_per_request": total / n, "matched_share": matched / max(shown, 1),
            "matched": matched, "requests": len(merged)}
