"""``ChannelService``: every channel of a config answering concurrently, merged per request.

    from twotower.channels import ChannelService, build_channels, load_channels_config
    cfg = load_channels_config("channels.yaml")
    build_channels(cfg)                      # = twotower channels build channels.yaml
    svc = ChannelService(cfg)                # = twotower serve --channels channels.yaml
    svc.retrieve([{"user_id": 6, "history": [50, 172]}], k=50)
    # -> {"results": [{"ids", "scores", "channels": [{"dssm": {"rank", "raw", "calibrated"}}]}],
    #     "failed_channels": {}, "index_version": "..."}

Channels run in a thread pool within ``service.budget_ms``: a channel that raises or is still
running at the deadline is named in ``failed_channels`` and the others are merged. (A timed-out
channel's thread cannot be killed in Python; it finishes in the background on its own worker,
so the pool has two workers per channel.) ``reload()`` re-reads the learned weights file and
swaps the merger's weights in one assignment: requests in flight keep the weights they started
with.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from twotower.channels.config import Calibration, ChannelsConfig, load_channels_config
from twotower.channels.kinds import BUILDERS, Channel, PopularityChannel, open_channel
from twotower.channels.merge import Merger, fit_isotonic_log
from twotower.channels.weights import WeightsFile
from twotower.errors import ArtifactError, DataError


def _folder(cfg: ChannelsConfig, name: str) -> Path:
    return cfg.output_dir / name


def build_channels(cfg: ChannelsConfig | str | Path, log=print) -> dict[str, dict]:
    """Validate every channel and build what needs building: co-occurrence / popularity / BM25
    tables, a flat index for a run that has none; then open each one (a channel that cannot
    serve fails here, by name)."""
    if not isinstance(cfg, ChannelsConfig):
        cfg = load_channels_config(cfg)
    report: dict[str, dict] = {}
    for ch in cfg.channels:
        t0 = time.perf_counter()
        if ch.kind in BUILDERS:
            info = BUILDERS[ch.kind](ch, _folder(cfg, ch.name))
        elif ch.kind == "run":
            info = _ensure_index(ch)
        else:
            info = {}
        opened = open_channel(ch, _folder(cfg, ch.name))
        info["fields"] = list(opened.fields)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        report[ch.name] = {"kind": ch.kind, **info}
        log(f"  {ch.name} ({ch.kind}): {info}")
    if cfg.merge.isotonic_log is not None:
        fit_isotonic_log(cfg.merge.isotonic_log, [c.name for c in cfg.channels
                                                  if cfg.calibration_of(c) == Calibration.ISOTONIC])
    from twotower.run import atomic_write_json

    atomic_write_json(cfg.output_dir / "build.json", report)
    return report


def _ensure_index(ch) -> dict:
    from twotower.index.ann import current_version
    from twotower.run import RunDir

    if not RunDir(ch.run).exists():
        raise ArtifactError(f"channel {ch.name!r}: {ch.run} is not a run folder (no config.yaml)")
    try:
        return {"index_version": ch.index_version or current_version(ch.run)}
    except ArtifactError:
        from twotower.index.run_index import build_run_index

        vi = build_run_index(ch.run, "flat")
        return {"index_version": vi.version, "built_index": "flat"}


def set_math_threads(n: int) -> None:
    """Threads of torch's and FAISS's parallel kernels (process-wide). A one-query search is
    microseconds of arithmetic; waking a pool of threads per channel costs more than it saves
    when several channels already run at once."""
    import torch

    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:  # FAISS is optional for channels without an index
        return
    faiss.omp_set_num_threads(n)


@dataclass
class _Counts:
    """What ``/health`` and ``/metrics`` read as the service's index: the items the largest
    channel can return, and its kind."""

    count: int
    manifest: dict = field(default_factory=lambda: {"kind": "channels"})


class ChannelService:
    """Channels + merger + learned weights; the serving interface of ``Retriever``
    (``query_columns``, ``retrieve``, ``version``, ``metadata``, ``reload``), so the HTTP app
    serves either."""

    def __init__(self, cfg: ChannelsConfig | str | Path, channels: dict[str, Channel] | None = None):
        self.cfg = cfg if isinstance(cfg, ChannelsConfig) else load_channels_config(cfg)
        names = [c.name for c in self.cfg.channels]
        if channels is None:
            channels = {c.name: open_channel(c, _folder(self.cfg, c.name)) for c in self.cfg.channels}
        missing = [n for n in names if n not in channels]
        if missing:
            raise ArtifactError(f"no channel object for {', '.join(missing)}")
        self.channels = channels
        if self.cfg.service.math_threads is not None:
            set_math_threads(self.cfg.service.math_threads)
        iso_names = [c.name for c in self.cfg.channels
                     if self.cfg.calibration_of(c) == Calibration.ISOTONIC]
        iso = fit_isotonic_log(self.cfg.merge.isotonic_log, iso_names) if iso_names else {}
        pop = None
        if self.cfg.merge.debias_channel:
            pc = channels[self.cfg.merge.debias_channel]
            pop = pc.popularity if isinstance(pc, PopularityChannel) else None
        self.merger = Merger.from_config(self.cfg, pop, iso)
        fields = {f for ch in channels.values() for f in ch.fields}
        if self.cfg.merge.exclude_field:
            fields.add(self.cfg.merge.exclude_field)
        self.query_columns = sorted(fields)
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.service.workers or 2 * len(names),
                                       thread_name_prefix="channel")
        self._lock = threading.Lock()
        self._weights_version = 0
        self.reload()

    # ---- weights (hot swap)
    @property
    def weights(self) -> dict[str, float]:
        return dict(self.merger.weights)

    def set_weights(self, weights: dict[str, float]) -> None:
        unknown = sorted(set(weights) - set(self.channels))
        if unknown:
            raise DataError(f"weights for unknown channel(s) {', '.join(unknown)}")
        new = {n: float(weights.get(n, self.merger.weights.get(n, 0.0))) for n in self.channels}
        self.merger.weights = new  # one reference assignment: in-flight merges keep theirs

    def reload(self, version: str | None = None) -> str:
        """Re-read the weights file (config weights when there is none); returns the version."""
        with self._lock:
            cur = WeightsFile(self.cfg.weights_path).current(list(self.channels))
            if cur is not None:
                self.set_weights(cur)
                self._weights_version += 1
            return self.version

    @property
    def version(self) -> str:
        """The weights version: v000000 = the config's weights, +1 per reload of a weights file."""
        return f"v{self._weights_version:06d}"

    @property
    def index(self) -> _Counts:
        counts = [len(c.items) if hasattr(c, "items") else c.retriever.index.count
                  for c in self.channels.values() if hasattr(c, "items") or hasattr(c, "retriever")]
        return _Counts(max(counts, default=0))

    def metadata(self) -> dict:
        return {"index_version": self.version, "channels": {c.name: c.kind for c in self.cfg.channels},
                "weights": self.weights, "merge": self.cfg.merge.model_dump(mode="json"),
                "query_columns": self.query_columns, "query_features": self.query_kinds(),
                "budget_ms": self.cfg.service.budget_ms}

    def query_kinds(self) -> dict[str, str]:
        """Each accepted field -> the kind of value it holds, as the channels reading it say."""
        kinds = {f: "value" for f in self.query_columns}
        for ch in self.channels.values():
            kinds.update(getattr(ch, "field_kinds", {}))
        if self.cfg.merge.exclude_field:
            kinds[self.cfg.merge.exclude_field] = "sequence"
        return kinds

    # ---- requests
    def fetch(self, requests: Sequence[dict], exclude: list[list] | None = None,
              only: Sequence[str] | None = None, budget_ms: float | None = None
              ) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
        """(answers by channel, failures by channel, milliseconds by channel) within the budget."""
        budget = (budget_ms or self.cfg.service.budget_ms) / 1000.0
        names = list(only) if only is not None else list(self.channels)
        t0 = time.perf_counter()
        done_at: dict[str, float] = {}

        def run(name: str):
            ch = self.channels[name]
            k = self.merger.fetch_k[name]
            try:
                return ch.retrieve(requests, k, exclude)
            finally:
                done_at[name] = (time.perf_counter() - t0) * 1000

        futures = {self.pool.submit(run, n): n for n in names}
        finished, _ = wait(futures, timeout=budget)
        answers, failures = {}, {}
        for fut, name in futures.items():
            if fut not in finished:
                fut.cancel()
                failures[name] = f"timed out after {budget * 1000:.0f} ms"
                continue
            err = fut.exception()
            if err is not None:
                failures[name] = f"{type(err).__name__}: {err}"
                continue
            answers[name] = fut.result()
        return answers, failures, {n: round(v, 3) for n, v in done_at.items()}

    def _excludes(self, requests: Sequence[dict], exclude: list[list] | None) -> list[list] | None:
        f = self.cfg.merge.exclude_field
        if exclude is not None and len(exclude) != len(requests):
            raise DataError(f"exclude has {len(exclude)} lists for {len(requests)} requests")
        if f is None:
            return exclude
        from twotower.channels.kinds import _as_list

        return [_as_list(r.get(f)) + list((exclude[i] if exclude else None) or [])
                for i, r in enumerate(requests)]

    def retrieve(self, requests: Sequence[dict], k: int | None = None,
                 exclude: list[list] | None = None, weights: dict[str, float] | None = None,
                 only: Sequence[str] | None = None) -> dict[str, Any]:
        """Merged top-k per request with each item's channel breakdown and failed channels."""
        requests = list(requests)
        unknown = sorted({f for r in requests for f in r} - set(self.query_columns))
        if unknown:
            raise DataError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"query fields are {', '.join(self.query_columns)}")
        ex = self._excludes(requests, exclude)
        answers, failures, ms = self.fetch(requests, ex, only)
        results = self.merger.merge(answers, len(requests), k, ex, weights)
        return {"results": results, "failed_channels": failures, "channel_ms": ms,
                "index_version": self.version}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def open_service(path: str | Path) -> ChannelService:
    """The service of a channels YAML (built tables must exist: ``build_channels`` first)."""
    return ChannelService(load_channels_config(path))


def learn_weights(cfg: ChannelsConfig | str | Path, feedback: str | Path, source: str = "") -> dict:
    """Update the bandit with a feedback log and save the new weights with their history
    (= ``twotower channels learn CONFIG.yaml FEEDBACK``)."""
    from twotower.channels.weights import bandit_from_file, read_feedback

    if not isinstance(cfg, ChannelsConfig):
        cfg = load_channels_config(cfg)
    bandit = bandit_from_file(cfg)
    bandit.update(read_feedback(feedback, cfg.learning))
    w = bandit.weights()
    WeightsFile(cfg.weights_path).save(w, bandit.stats(), source or str(feedback))
    return {"weights": w, "stats": bandit.stats(), "file": str(cfg.weights_path)}


def replay(service: ChannelService, feedback: str | Path, settings: dict[str, dict[str, float]],
           k: int | None = None) -> dict[str, dict]:
    """Replay every weight setting on a held-out feedback log that carries the request fields
    (= ``twotower channels replay``): channels answer once, each setting re-merges."""
    from twotower.channels.weights import logged_requests, read_feedback, replay_reward

    fb = read_feedback(feedback, service.cfg.learning)
    requests, outcomes = logged_requests(fb, service.query_columns)
    ex = service._excludes(requests, None)
    answers, failures, _ = service.fetch(requests, ex, budget_ms=3_600_000)
    if failures:
        raise DataError(f"replay: channel(s) failed: {failures}")
    out = {}
    for name, w in settings.items():
        merged = service.merger.merge(answers, len(requests), k, ex, w)
        out[name] = replay_reward(merged, outcomes) | {"weights": w}
    return out
