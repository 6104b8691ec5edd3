"""Micro-batching of concurrent ``/retrieve`` calls: one tower forward and one index search for many.

A served request costs mostly fixed per-call work (feature encoding's ~30 Arrow/NumPy calls, the
tower's ~20 small tensor ops, one index search), not work that grows with its rows, so requests
that arrive together are answered together. One worker thread owns the model and the index:

- it takes every call queued (up to ``max_batch`` query rows) in arrival order;
- under load (the previous batch held more than one call) it waits at most ``max_wait_ms`` for
  more to arrive before running, so a lone client never pays the wait;
- the batch is encoded, searched once with the largest ``k`` asked (plus room for the longest
  ``exclude`` list) on one index version, and each call gets its own rows cut to its ``k``;
- a call whose values fail to encode (a ``DataError``) fails alone: the batch is re-run call by
  call so the others still get their answer.

Triton's dynamic batcher and TF Serving's batching session work the same way (bounded queue
delay, preferred batch size); this one is a thread and a queue, no extra service.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from twotower.errors import DataError
from twotower.serve.retriever import Retriever
from twotower.serve.tracing import Tracing


@dataclass
class _Call:
    queries: Sequence[dict]
    k: int
    exclude: list[list] | None
    future: Future = field(default_factory=Future)
    link: Any = None  # the calling request's span context: the batch's span links to it


@dataclass
class BatchStats:
    """Counters of what the batcher did (calls, batches, rows) — for tests and /metadata."""

    calls: int = 0
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "batches": self.batches, "rows": self.rows,
                "largest_batch": self.largest_batch,
                "mean_calls_per_batch": self.calls / self.batches if self.batches else 0.0}


class MicroBatcher:
    """Answers ``submit(queries, k, exclude)`` futures by batching concurrent calls (see module)."""

    def __init__(self, retriever: Retriever, max_batch: int = 256, max_wait_ms: float = 2.0,
                 tracing: Tracing | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError("max_wait_ms must be within [0, 1000]")
        self.retriever = retriever
        self.tracing = tracing or Tracing()
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="twotower-batcher", daemon=True)
        self._thread.start()

    # ---- client side
    def submit(self, queries: Sequence[dict], k: int, exclude: list[list] | None = None) -> Future:
        call = _Call(list(queries), int(k), exclude, link=self.tracing.current())
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(call)
            self._cond.notify()
        return call.future

    def retrieve(self, queries: Sequence[dict], k: int = 10,
                 exclude: list[list] | None = None) -> dict[str, Any]:
        """Blocking form of ``submit`` (same answer as ``Retriever.retrieve``)."""
        return self.submit(queries, k, exclude).result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)

    # ---- worker side
    def _take(self, under_load: bool) -> list[_Call]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if under_load and self.max_wait:
                deadline = time.perf_counter() + self.max_wait
                while self._rows_queued() < self.max_batch and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            calls, rows = [], 0
            while self._queue and (not calls or rows + len(self._queue[0].queries) <= self.max_batch):
                call = self._queue.popleft()
                calls.append(call)
                rows += len(call.queries)
            return calls

    def _rows_queued(self) -> int:
        return sum(len(c.queries) for c in self._queue)

    def _loop(self) -> None:
        under_load = False
        while True:
            calls = self._take(under_load)
            if not calls:  # closed and drained
                return
            under_load = len(calls) > 1
            self._run(calls)

    def _run(self, calls: list[_Call]) -> None:
        rows = sum(len(c.queries) for c in calls)
        with self.tracing.span("retrieve.batch", {"twotower.calls": len(calls), "twotower.rows": rows},
                               links=[c.link for c in calls]):
            self._answer(calls)

    def _answer(self, calls: list[_Call]) -> None:
        s = self.stats
        s.calls += len(calls)
        s.batches += 1
        rows = sum(len(c.queries) for c in calls)
        s.rows += rows
        s.largest_batch = max(s.largest_batch, rows)
        try:
            answers = answer_together(self.retriever, calls)
        except DataError:
            if len(calls) == 1:
                answers = None
            else:  # one call's bad value must not fail its neighbours
                for call in calls:
                    self._run_one(call)
                return
        except BaseException as err:  # noqa: BLE001 — handed to the waiting callers
            for call in calls:
                call.future.set_exception(err)
            return
        if answers is None:
            self._run_one(calls[0])
            return
        for call, answer in zip(calls, answers):
            call.future.set_result(answer)

    def _run_one(self, call: _Call) -> None:
        try:
            call.future.set_result(self.retriever.retrieve(call.queries, call.k, call.exclude))
        except BaseException as err:  # noqa: BLE001
            call.future.set_exception(err)


def answer_together(retriever: Retriever, calls: list[_Call]) -> list[dict]:
    """Every call's ``retrieve`` answer from one encode and one search on one index version."""
    queries = [q for c in calls for q in c.queries]
    k = max(c.k for c in calls)
    exclude = None
    if any(c.exclude is not None for c in calls):
        exclude = [e for c in calls for e in (c.exclude or [[]] * len(c.queries))]
    both = retriever.retrieve(queries, k, exclude)
    out, start = [], 0
    for c in calls:
        rows = both["results"][start:start + len(c.queries)]
        start += len(c.queries)
        if c.k < k:
            rows = [{"ids": r["ids"][:c.k], "scores": r["scores"][:c.k]} for r in rows]
        out.append({"results": rows, "index_version": both["index_version"]})
    return out


@dataclass(frozen=True)
class BatchingConfig:
    """How the service batches: ``enabled=False`` answers each call on its own (one thread each)."""

    enabled: bool = True
    max_batch: int = 256  # query rows per tower forward / index search
    max_wait_ms: float = 2.0  # longest a call waits for companions, only under load


def _json_bytes(body: dict) -> bytes:
    try:
        import orjson
    except ImportError:  # orjson is optional: ~5x faster on a response of 50 ids and scores
        return json.dumps(body, separators=(",", ":")).encode()
    return orjson.dumps(body)


def attach_batching(app, retriever: Retriever, cfg: BatchingConfig | None,
                    tracing: Tracing | None = None
                    ) -> Callable[[Sequence[dict], int, list | None], Awaitable[Any]]:
    """The ``/retrieve`` answer function of ``app``: batched (default) or one call per thread.

    Returns an async function giving the encoded JSON response; the batcher is closed on the
    app's shutdown and its counters are at ``app.state.batcher.stats``."""
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    cfg = cfg or BatchingConfig()
    # a channel service (several runs merged, extra fields per result) answers call by call
    batched = cfg.enabled and isinstance(retriever, Retriever)
    batcher = MicroBatcher(retriever, cfg.max_batch, cfg.max_wait_ms, tracing) if batched else None
    app.state.batcher = batcher
    if batcher is not None and isinstance(getattr(app.router, "on_shutdown", None), list):
        app.router.on_shutdown.append(batcher.close)  # the thread is a daemon either way

    async def answer(queries: Sequence[dict], k: int, exclude: list | None) -> Response:
        if batcher is None:
            body = await run_in_threadpool(retriever.retrieve, queries, k, exclude)
        else:
            body = await asyncio.wrap_future(batcher.submit(queries, k, exclude))
        return Response(_json_bytes(body), media_type="application/json")

    return answer
