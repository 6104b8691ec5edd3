"""Retriever + FastAPI service: validation errors, OOV, exclude, hot swap under concurrent load."""
import threading

import pytest
from fastapi.testclient import TestClient

from twotower.data.simulator import SimulatorConfig, simulate
from twotower.index.run_index import build_run_index
from twotower.pipeline import train_run
from twotower.presets import simulator_config
from twotower.serve.app import create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    simulate(SimulatorConfig(n_impressions=3000, n_ads=200, n_queries=60, n_users=50), root / "data")
    train_run(simulator_config(root / "data", root / "run", train={"epochs": 1, "batch_size": 64}),
              overwrite=True)
    build_run_index(root / "run", "flat")
    return root / "run"


@pytest.fixture(scope="module")
def client(run_dir):
    return TestClient(create_app(run_dir, max_k=50, api_key="secret"))


def test_retrieve_and_oov(client):
    r = client.post("/retrieve", json={"queries": [{"user_id": 1, "query_text": "running shoes"},
                                                   {"user_id": "never-seen"}, {}], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == "v000001" and len(body["results"]) == 3
    assert all(len(x["ids"]) == 5 for x in body["results"])
    first = body["results"][0]["ids"][0]
    r2 = client.post("/retrieve", json={"queries": [{"user_id": 1, "query_text": "running shoes"}],
                                        "k": 5, "exclude": [[first]]})
    assert first not in r2.json()["results"][0]["ids"]
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/metadata").json()["kind"] == "flat"


def test_validation_errors_name_the_field(client):
    r = client.post("/retrieve", json={"queries": [{"user_id": 1}], "k": 500})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
    r = client.post("/retrieve", json={"queries": [{"usr_id": 1}]})
    assert r.status_code == 422 and "usr_id" in r.json()["detail"][0]["loc"]
    r = client.post("/retrieve", json={"queries": [{"user_id": {"a": 1}}]})
    assert r.status_code == 422 and "user_id" in r.json()["detail"][0]["loc"]
    r = client.post("/retrieve", json={"k": 3})
    assert r.status_code == 422 and "queries" in r.json()["detail"][0]["loc"]
    r = client.post("/retrieve", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_hot_swap_under_concurrent_requests(client, run_dir):
    assert client.post("/admin/reload").status_code == 401
    errors, versions = [], set()
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.post("/retrieve", json={"queries": [{"user_id": 3}], "k": 10})
            if r.status_code != 200:
                errors.append(r.text)
            else:
                versions.add(r.json()["index_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    build_run_index(run_dir, "hnsw")
    r = client.post("/admin/reload", headers={"X-API-Key": "secret"})
    assert r.status_code == 200 and r.json()["index_version"] == "v000002"
    # a corrupt new version is refused; the old one keeps serving
    build_run_index(run_dir, "flat")
    (run_dir / "index" / "v000003" / "index.faiss").write_bytes(b"garbage")
    r = client.post("/admin/reload", headers={"X-API-Key": "secret"})
    assert r.status_code == 409 and "v000002" in r.json()["detail"]
    stop.set()
    for t in threads:
        t.join()
    assert not errors and versions <= {"v000001", "v000002"}
    assert client.get("/health").json()["index_version"] == "v000002"
