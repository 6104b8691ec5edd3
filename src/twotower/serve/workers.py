"""Several uvicorn worker processes serving one run, sharing one memory-mapped index.

``twotower serve RUN --workers N`` starts N stateless replicas of the app on one port (uvicorn's
supervisor shares the listening socket; the kernel spreads connections). Each worker maps the
index file read-only (FAISS ``IO_FLAG_MMAP``), so the vectors sit once in the page cache however
many workers there are. Stateless replicas behind any load balancer are also the way to more
machines: nothing but the run folder is shared.

Hot swap with several workers: ``POST /admin/reload`` swaps the worker that received it; every
worker also watches ``RUN/index/CURRENT`` (written last, atomically, by ``twotower index`` / ``index
add`` / ``index remove``) and swaps when it names a new version, so all replicas converge within
``poll_s``. A version that fails to load is refused (the worker keeps serving the old one) and
not retried until CURRENT changes again.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from twotower.errors import ArtifactError
from twotower.serve.batcher import BatchingConfig
from twotower.serve.retriever import Retriever

ENV_KEY = "TWOTOWER_SERVE_OPTIONS"  # how the supervisor hands options to its spawned workers
log = logging.getLogger("twotower.serve")


class IndexWatcher:
    """Reload ``retriever`` when ``RUN/index/CURRENT`` names a new version (checked every ``poll_s``)."""

    def __init__(self, retriever: Retriever, poll_s: float = 1.0):
        self.retriever = retriever
        self.poll_s = poll_s
        self.path = Path(retriever.run.root) / "index" / "CURRENT"
        self._seen = self._current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="twotower-index-watch", daemon=True)
        self._thread.start()

    def _current(self) -> str | None:
        try:
            return self.path.read_text().strip()
        except OSError:
            return None

    def check(self) -> bool:
        """One poll: True when it swapped to a new CURRENT version."""
        cur = self._current()
        if cur is None or cur == self._seen:
            return False
        self._seen = cur  # a bad version is tried once, not on every poll
        if cur == self.retriever.version:
            return False
        try:
            self.retriever.reload(cur)
        except ArtifactError as err:
            log.warning("index %s refused, still serving %s: %s", cur, self.retriever.version, err)
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def close(self) -> None:
        self._stop.set()


def worker_app():
    """uvicorn factory of one worker: the app built from the supervisor's options (env)."""
    from twotower.serve.app import create_app
    from twotower.serve.metrics import configure_access_log
    from twotower.serve.security import SecurityConfig

    configure_access_log()
    opts = json.loads(os.environ[ENV_KEY])
    retriever = Retriever(opts["run_dir"], threads=opts.get("threads"), mmap=True)
    security = SecurityConfig(api_key=opts.get("api_key"), client_key=opts.get("client_key"),
                              cors_origins=tuple(opts.get("cors_origins", ())))
    app = create_app(retriever=retriever, max_k=opts["max_k"], security=security,
                     docs=opts.get("docs", True), inspector=opts.get("inspector", False),
                     batching=BatchingConfig(**opts["batching"]))
    app.state.index_watcher = IndexWatcher(retriever, opts.get("poll_s", 1.0))
    return app


def serve_workers(run_dir: str | Path, host: str, port: int, workers: int, max_k: int = 1000,
                  api_key: str | None = None, batching: BatchingConfig | None = None,
                  inspector: bool = False, threads: int | None = 1, poll_s: float = 1.0,
                  client_key: str | None = None, cors_origins: tuple[str, ...] = (),
                  docs: bool = True) -> None:
    """Run ``workers`` replicas of the service on ``host:port`` (blocks until stopped); the keys,
    CORS origins and docs switch mean what they mean for one ``serve`` (serve/security.py)."""
    import dataclasses

    import uvicorn

    b = batching or BatchingConfig()
    os.environ[ENV_KEY] = json.dumps({
        "run_dir": str(Path(run_dir).resolve()), "max_k": max_k, "api_key": api_key,
        "batching": dataclasses.asdict(b), "threads": threads, "poll_s": poll_s,
        "inspector": inspector, "client_key": client_key, "cors_origins": list(cors_origins),
        "docs": docs})
    uvicorn.run("twotower.serve.workers:worker_app", factory=True, host=host, port=port,
                workers=workers, log_level="warning")
