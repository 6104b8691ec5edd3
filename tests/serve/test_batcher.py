"""Micro-batching (serve/batcher.py), memory-mapped indexes and two worker processes."""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import tiny_sections
from fastapi.testclient import TestClient

from twotower.errors import DataError
from twotower.index.ann import load_index, save_index
from twotower.index.run_index import build_run_index
from twotower.pipeline import train_run
from twotower.presets import simulator_config
from twotower.serve.app import create_app
from twotower.serve.batcher import BatchingConfig, MicroBatcher
from twotower.serve.retriever import Retriever
from twotower.serve.workers import IndexWatcher

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def run_dir(sim_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("batcher") / "run"
    train_run(simulator_config(sim_dir, run, **tiny_sections(epochs=1)), overwrite=True)
    build_run_index(run, "ivf-flat", {"nlist": 4, "nprobe": 4})
    return run


@pytest.fixture(scope="module")
def retriever(run_dir):
    return Retriever(run_dir)


def _requests(n):
    words = ["running shoes", "cheap laptop", "red dress", None, "garden tools"]
    return [{"user_id": i % 13, "query_text": words[i % len(words)]} for i in range(n)]


def test_batched_answers_equal_one_by_one(retriever):
    batcher = MicroBatcher(retriever, max_batch=64, max_wait_ms=5)
    calls = []
    reqs = _requests(30)
    for i in range(0, 30, 3):  # calls of 3 rows, different k, some with exclude lists
        k = 5 + i % 7
        ex = None
        if i % 2:
            ex = [[r] for r in retriever.retrieve(reqs[i:i + 3], 2)["results"][0]["ids"][:1]] * 3
        calls.append((reqs[i:i + 3], k, ex))
    try:
        futures = [batcher.submit(q, k, ex) for q, k, ex in calls]  # queued while the first runs
        got = [f.result(30) for f in futures]
    finally:
        batcher.close()
    assert batcher.stats.calls == len(calls) and batcher.stats.batches < len(calls)
    assert 3 < batcher.stats.largest_batch <= 64
    for (q, k, ex), answer in zip(calls, got):
        want = retriever.retrieve(q, k, ex)
        assert answer["index_version"] == want["index_version"]
        for a, w in zip(answer["results"], want["results"]):
            assert len(a["ids"]) == k
            assert a["ids"] == w["ids"] and np.allclose(a["scores"], w["scores"], atol=1e-5)
        if ex is not None:
            assert all(e[0] not in r["ids"] for e, r in zip(ex, answer["results"]))


def test_a_bad_call_fails_alone(retriever):
    batcher = MicroBatcher(retriever, max_batch=64, max_wait_ms=5)
    try:
        good = [batcher.submit(_requests(2), 4) for _ in range(3)]
        bad = batcher.submit([{"usr_id": 1}], 4)
        more = [batcher.submit(_requests(1), 4) for _ in range(3)]
        with pytest.raises(DataError, match="usr_id"):
            bad.result(30)
        assert all(len(f.result(30)["results"]) in (1, 2) for f in good + more)
    finally:
        batcher.close()


def test_max_batch_bounds_rows_and_service_uses_the_batcher(retriever):
    app = create_app(retriever=retriever, batching=BatchingConfig(max_batch=4, max_wait_ms=2))
    client = TestClient(app)
    out, errors = [], []

    def hit(i):
        r = client.post("/retrieve", json={"queries": _requests(1 + i % 3), "k": 3})
        (out if r.status_code == 200 else errors).append(r)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = app.state.batcher.stats
    assert not errors and len(out) == 24 and stats.calls == 24
    assert stats.largest_batch <= 4
    # a value of the wrong kind: the Retriever's field check, inside the batcher, fails it alone
    bad = client.post("/retrieve", json={"queries": [{"user_id": [{}]}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "user_id"
    # refused by request validation: never reaches the batcher
    assert client.post("/retrieve", json={"queries": _requests(1), "k": True}).status_code == 422
    one_by_one = TestClient(create_app(retriever=retriever, batching=BatchingConfig(enabled=False)))
    a = one_by_one.post("/retrieve", json={"queries": _requests(2), "k": 3}).json()
    b = client.post("/retrieve", json={"queries": _requests(2), "k": 3}).json()
    assert a == b and app.state.batcher.stats.calls == 26  # 24 + the bad value + b


def test_mmap_index_answers_as_a_private_copy(run_dir, retriever):
    mapped = load_index(run_dir, mmap=True)
    private = load_index(run_dir)
    q = retriever.encode(_requests(8))[:, 0]
    assert np.array_equal(mapped.search(q, 10)[1], private.search(q, 10)[1])
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file itself is mapped, not read into private memory
        assert str(mapped.path / "index.faiss") in maps.read_text()


def test_index_watcher_follows_current_and_refuses_a_corrupt_version(tmp_path, run_dir):
    r = Retriever(run_dir, mmap=True)
    watcher = IndexWatcher(r, poll_s=3600)  # polled by hand below
    try:
        assert not watcher.check()
        new = save_index(load_index(run_dir), run_dir)
        assert watcher.check() and r.version == new
        bad = save_index(load_index(run_dir), run_dir)
        (Path(run_dir) / "index" / bad / "ids.parquet").write_bytes(b"corrupt")
        assert not watcher.check() and r.version == new  # refused: the old one keeps serving
        assert not watcher.check()  # and not retried until CURRENT changes
    finally:
        watcher.close()
        fixed = save_index(load_index(run_dir, new), run_dir)  # leave a loadable CURRENT
        assert (Path(run_dir) / "index" / "CURRENT").read_text().strip() == fixed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_serve_and_swap_together(run_dir):
    """The README's scale-out example: `twotower serve RUN --workers 2`, two replicas on one port."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "twotower", "serve", str(run_dir), "--port",
                             str(port), "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # two imports of torch: ~8 s idle, 80 s on a loaded VM
        pids, versions = set(), set()
        while time.time() < deadline and len(pids) < 2:
            try:
                h = httpx.get(url + "/health", timeout=2).json()  # a new connection each time
                pids.add(h["worker"])
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        assert len(pids) == 2, f"only workers {pids} answered"
        r = httpx.post(url + "/retrieve", json={"queries": _requests(3), "k": 5}, timeout=10)
        assert r.status_code == 200 and all(len(x["ids"]) == 5 for x in r.json()["results"])
        new = save_index(load_index(run_dir), run_dir)  # CURRENT moves: both workers follow
        deadline = time.time() + 20
        while time.time() < deadline:
            seen = {}
            for _ in range(30):
                h = httpx.get(url + "/health", timeout=2).json()
                seen[h["worker"]] = h["index_version"]
            versions = set(seen.values())
            if len(seen) == 2 and versions == {new}:
                break
            time.sleep(0.5)
        assert len(seen) == 2 and versions == {new}, seen
    finally:
        proc.terminate()
        proc.wait(30)
