"""A service of the benches on 127.0.0.1: start it on a free port, wait for ``/health``, stop it.

One helper for every bench that loads a live ``twotower serve`` (bench/serve_load.py,
bench/channels.py)::

    with loopback_server(lambda port: [sys.executable, "-m", "twotower", "serve", RUN,
                                       "--port", str(port)]) as url:
        httpx.post(url + "/retrieve", ...)

The server's stderr goes to ``log`` (a file) or nowhere, never to a pipe nobody reads: a JSON
access log fills a pipe and blocks the server. A server that exits before it answers is an error
carrying the end of its log; one that does not stop on SIGTERM within 30 s is killed.
"""
from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, wait_s: float = 300.0,
                 log: Path | None = None) -> None:
    """Return once ``url/health`` answers 200; SystemExit if ``proc`` exits or ``wait_s`` passes."""
    import httpx

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
            raise SystemExit(f"service exited with {proc.returncode}\n{tail}")
        time.sleep(0.25)
    raise SystemExit(f"service did not answer {url}/health within {wait_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # uvicorn waits for requests still in flight
        proc.kill()
        proc.wait(30)


@contextmanager
def loopback_server(command: Callable[[int], Sequence[str]], env: Mapping[str, str] | None = None,
                    log: Path | None = None, wait_s: float = 300.0) -> Iterator[str]:
    """``command(port)`` started on a free loopback port; yields its URL once healthy."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(list(command(port)), stdout=subprocess.DEVNULL, stderr=err,
                                env=None if env is None else dict(env))
        try:
            wait_healthy(url, proc, wait_s, log)
            yield url
        finally:
            stop(proc)
    finally:
        if log is not None:
            err.close()
