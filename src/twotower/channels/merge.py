"""Merging channels: calibration, fusion, dedup with attribution, quotas, exclusions, top-N.

Per request, each channel's list is cut at its ``fetch_k`` (the overfetch) before anything else,
so a merge never depends on how many items a channel could have returned. Then:

1. **calibration** of every channel's scores to one scale: weighted reciprocal rank fusion
   (``w / (rrf_k + rank + 1)``, Cormack et al., SIGIR 2009), z-score or min-max over the fetched
   list, raw (``none``), or ``isotonic``: a monotone map raw score -> click probability fitted per
   channel on a click log (pool-adjacent-violators, Zadrozny & Elkan, KDD 2002);
2. **fusion + dedup**: an item found by several channels gets the sum (or max) of their weighted
   calibrated scores and keeps every (channel, rank, raw score, calibrated score);
3. optional **debiasing**: the fused score shrunk by (1 + popularity)^alpha;
4. **deterministic order**: by fused score, ties broken by a seeded hash of the item id (the same
   request gives the same answer in every process);
5. **quotas** decide which items enter the top N: ``fixed`` (each channel's own best ``quota``
   items, the rest by fused score), ``snake`` (quota weight / sum(weights) x N, filled round-robin
   across channels, as PAI-Rec's snake merge), ``priority`` (channels in config order, each one's
   unused quota carried over to the next); the returned order is always the fused order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from twotower.channels.config import Calibration, ChannelsConfig, Fusion, MergeConfig, Quota
from twotower.errors import DataError

#: one channel's answer for a batch of requests: per request raw ids and raw scores, best first
Answer = tuple[list[list], list[np.ndarray]]


# ------------------------------------------------------------------ calibration
@dataclass(frozen=True)
class IsotonicMap:
    """Piecewise-linear monotone map between block centres of the PAV fit."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.x, self.y)


def fit_isotonic(scores: np.ndarray, clicks: np.ndarray, bins: int = 1000) -> IsotonicMap:
    """Non-decreasing click probability as a function of the raw score (pool adjacent
    violators over at most ``bins`` equal-count score bins)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(clicks, dtype=np.float64)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    if len(s) == 0:
        raise DataError("isotonic calibration: no finite scores to fit")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    edges = np.unique(np.linspace(0, len(s), min(bins, len(s)) + 1).astype(np.int64))
    sums = np.add.reduceat(y, edges[:-1])
    xs = np.add.reduceat(s, edges[:-1])
    cnt = np.diff(edges).astype(np.float64)
    # PAV over the bins: a stack of blocks (sum of clicks, sum of scores, count)
    bs, bx, bc = [], [], []
    for a, b, c in zip(sums.tolist(), xs.tolist(), cnt.tolist()):
        bs.append(a), bx.append(b), bc.append(c)
        while len(bs) > 1 and bs[-2] / bc[-2] >= bs[-1] / bc[-1]:
            a2, b2, c2 = bs.pop(), bx.pop(), bc.pop()
            bs[-1] += a2
            bx[-1] += b2
            bc[-1] += c2
    c = np.array(bc)
    return IsotonicMap(np.array(bx) / c, np.array(bs) / c)


def fit_isotonic_log(path: Path, channels: Sequence[str]) -> dict[str, IsotonicMap]:
    """Per channel, the isotonic map of a click log with columns ``channel, score, click``."""
    from twotower.data.readers import TableSource

    if not Path(path).is_file():
        raise DataError(f"merge.isotonic_log: {path} not found")
    src = TableSource(path)
    missing = [c for c in ("channel", "score", "click") if c not in src.columns]
    if missing:
        raise DataError(f"merge.isotonic_log {path}: missing column {', '.join(missing)} "
                        "(needs channel, score, click)")
    t = src.read(["channel", "score", "click"])
    ch = np.asarray(t["channel"].to_pylist(), dtype=object)
    sc = t["score"].cast("float64").to_numpy(zero_copy_only=False)
    y = t["click"].cast("float64").fill_null(0).to_numpy(zero_copy_only=False)
    out = {}
    for name in channels:
        m = ch == name
        if not m.any():
            raise DataError(f"merge.isotonic_log {path}: no rows for channel {name!r}")
        out[name] = fit_isotonic(sc[m], y[m])
    return out


def calibrate(kind: Calibration, raw: np.ndarray, rrf_k: float = 60.0,
              iso: IsotonicMap | None = None) -> np.ndarray:
    """Calibrated scores of one channel's fetched list (best first)."""
    raw = np.asarray(raw, dtype=np.float64)
    if kind == Calibration.RRF:
        return 1.0 / (rrf_k + np.arange(len(raw)) + 1.0)
    if kind == Calibration.NONE or len(raw) == 0:
        return raw
    if kind == Calibration.ZSCORE:
        sd = raw.std()
        return (raw - raw.mean()) / sd if sd > 0 else np.zeros_like(raw)
    if kind == Calibration.MINMAX:
        lo, hi = raw.min(), raw.max()
        return (raw - lo) / (hi - lo) if hi > lo else np.ones_like(raw)
    if kind == Calibration.ISOTONIC:
        if iso is None:
            raise DataError("isotonic calibration without a fitted map")
        return iso(raw)
    raise ValueError(kind)


# ------------------------------------------------------------------ quotas
def snake_quotas(weights: Sequence[float], n: int) -> np.ndarray:
    """Quota weight / sum(weights) x n of each channel, rounded by largest remainder."""
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    if w.sum() <= 0:
        w = np.ones_like(w)
    exact = w / w.sum() * n
    q = np.floor(exact).astype(np.int64)
    rest = n - int(q.sum())
    if rest > 0:
        q[np.lexsort((np.arange(len(w)), -(exact - q)))[:rest]] += 1
    return q


def _select(kind: Quota, n: int, fused_order: np.ndarray, channel_lists: list[np.ndarray],
            quotas: np.ndarray) -> np.ndarray:
    """Unique-item indices chosen for the top n (fused order); ``channel_lists[c]``: unique-item
    indices of channel c in its own rank order (already deduplicated, excluded removed)."""
    if kind == Quota.NONE:
        return fused_order[:n]
    taken: dict[int, None] = {}  # insertion-ordered set

    def take_from(lst: np.ndarray, count: int, start: int) -> int:
        """Take up to ``count`` new items of ``lst`` from position ``start``; new position."""
        i = start
        while count > 0 and i < len(lst) and len(taken) < n:
            u = int(lst[i])
            i += 1
            if u not in taken:
                taken[u] = None
                count -= 1
        return i

    if kind == Quota.FIXED:
        for lst, q in zip(channel_lists, quotas):
            take_from(lst, int(q), 0)
    elif kind == Quota.PRIORITY:
        carry = 0
        for lst, q in zip(channel_lists, quotas):
            before = len(taken)
            budget = int(q) + carry
            take_from(lst, budget, 0)
            carry = budget - (len(taken) - before)
    elif kind == Quota.SNAKE:
        cursor = [0] * len(channel_lists)
        got = [0] * len(channel_lists)
        moved = True
        while moved and len(taken) < n:  # one item per channel per round, within its quota
            moved = False
            for c, lst in enumerate(channel_lists):
                if got[c] < quotas[c] and cursor[c] < len(lst):
                    before = len(taken)
                    cursor[c] = take_from(lst, 1, cursor[c])
                    got[c] += len(taken) - before
                    moved = True
    # whatever the quotas left free goes to the best remaining items by fused score
    for u in fused_order.tolist():
        if len(taken) >= n:
            break
        taken.setdefault(u, None)
    chosen = np.fromiter(taken, dtype=np.int64, count=len(taken))
    rank_of = np.empty(len(fused_order), dtype=np.int64)
    rank_of[fused_order] = np.arange(len(fused_order))
    return chosen[np.argsort(rank_of[chosen], kind="stable")]


# ------------------------------------------------------------------ the merger
@dataclass
class Merger:
    """Merges per-channel answers; ``weights`` may be swapped at any time (one assignment)."""

    names: list[str]
    cfg: MergeConfig
    weights: dict[str, float]
    calibrations: dict[str, Calibration]
    fetch_k: dict[str, int]
    quotas: dict[str, int] = field(default_factory=dict)
    isotonic: dict[str, IsotonicMap] = field(default_factory=dict)
    popularity: Callable[[Sequence], np.ndarray] | None = None

    @classmethod
    def from_config(cls, cfg: ChannelsConfig, popularity=None, isotonic=None) -> "Merger":
        names = [c.name for c in cfg.channels]
        return cls(names, cfg.merge, {c.name: c.weight for c in cfg.channels},
                   {c.name: cfg.calibration_of(c) for c in cfg.channels},
                   {c.name: cfg.fetch_k(c) for c in cfg.channels},
                   {c.name: c.quota or 0 for c in cfg.channels}, isotonic or {}, popularity)

    def _ties(self, keys: list[str]) -> np.ndarray:
        """Seeded hash of each id key (cached: a catalogue's ids repeat across requests)."""
        from twotower.features.hashing import hash_strings

        cache = self.__dict__.setdefault("_tie_cache", {})
        if len(cache) > 1_000_000:  # bounded memory on an open-ended id space
            cache.clear()
        new = [k for k in keys if k not in cache]
        if new:
            cache.update(zip(new, hash_strings(new, salt=self.cfg.seed).tolist()))
        return np.array([cache[k] for k in keys], dtype=np.uint64)

    def merge(self, answers: dict[str, Answer], n_requests: int, n: int | None = None,
              exclude: list[list] | None = None, weights: dict[str, float] | None = None
              ) -> list[dict]:
        """Per request ``{"ids", "scores", "channels"}``; ``channels[j]`` maps each channel that
        found item j to its ``rank`` (0 = its best), ``raw`` and ``calibrated`` scores.
        ``answers`` may lack channels (failed ones): the rest are merged."""
        n = n or self.cfg.n
        weights = weights or self.weights
        live = [c for c in self.names if c in answers]
        out = []
        for r in range(n_requests):
            ex = set(exclude[r] or []) if exclude is not None else set()
            ex |= {str(x) for x in ex}
            out.append(self._merge_one(r, live, answers, n, ex, weights))
        return out

    def _merge_one(self, r: int, live: list[str], answers: dict[str, Answer], n: int,
                   ex: set, weights: dict[str, float]) -> dict:
        ids: list = []
        ch_idx, ranks, raws, cals = [], [], [], []
        for c, name in enumerate(live):
            a_ids, a_scores = answers[name][0][r], np.asarray(answers[name][1][r], np.float64)
            kk = self.fetch_k[name]
            a_ids, a_scores = list(a_ids[:kk]), a_scores[:kk]
            if ex:
                keep = [i for i, x in enumerate(a_ids) if x not in ex and str(x) not in ex]
                if len(keep) != len(a_ids):
                    a_ids, a_scores = [a_ids[i] for i in keep], a_scores[keep]
            cal = calibrate(self.calibrations[name], a_scores, self.cfg.rrf_k,
                            self.isotonic.get(name))
            ids.extend(a_ids)
            ch_idx.append(np.full(len(a_ids), c))
            ranks.append(np.arange(len(a_ids)))
            raws.append(a_scores)
            cals.append(cal)
        if not ids:
            return {"ids": [], "scores": [], "channels": []}
        ch_idx, ranks = np.concatenate(ch_idx), np.concatenate(ranks)
        raws, cals = np.concatenate(raws), np.concatenate(cals)
        # dedup by the id's text (12 and "12" are one item): codes in order of first appearance,
        # one dict pass (sorting the strings cost more than the rest of the merge)
        keys = [str(x) for x in ids]
        uniq = list(dict.fromkeys(keys))
        code = {k: i for i, k in enumerate(uniq)}
        inv = np.array([code[k] for k in keys], dtype=np.int64)
        first = np.unique(inv, return_index=True)[1]
        w = np.array([weights.get(name, 0.0) for name in live])
        contrib = w[ch_idx] * cals
        if self.cfg.fusion == Fusion.SUM:
            fused = np.bincount(inv, weights=contrib, minlength=len(uniq))
        else:
            fused = np.full(len(uniq), -np.inf)
            np.maximum.at(fused, inv, contrib)
        u_ids = [ids[i] for i in first]
        if self.cfg.debias_alpha > 0 and self.popularity is not None:
            shrink = (1.0 + self.popularity(u_ids)) ** self.cfg.debias_alpha
            fused = np.where(fused > 0, fused / shrink, fused * shrink)
        tie = self._ties(uniq)
        order = np.lexsort((tie, -fused))
        if self.cfg.quota == Quota.NONE:
            chosen = order[:n]
        else:
            lists = [inv[ch_idx == c] for c in range(len(live))]  # already in rank order
            if self.cfg.quota == Quota.SNAKE:
                q = snake_quotas([weights.get(name, 0.0) for name in live], n)
            else:
                q = np.array([self.quotas.get(name, 0) for name in live])
            chosen = _select(self.cfg.quota, n, order, lists, q)
        # attribution: every (channel, rank, raw, calibrated) of each chosen item
        by_item = np.argsort(inv, kind="stable")
        starts = np.searchsorted(inv[by_item], np.arange(len(uniq) + 1))
        breakdown = []
        for u in chosen.tolist():
            entries = by_item[starts[u]:starts[u + 1]]
            breakdown.append({live[int(ch_idx[e])]: {"rank": int(ranks[e]), "raw": float(raws[e]),
                                                     "calibrated": float(cals[e])}
                              for e in entries.tolist()})
        return {"ids": [u_ids[u] for u in chosen.tolist()],
                "scores": [float(fused[u]) for u in chosen.tolist()], "channels": breakdown}
