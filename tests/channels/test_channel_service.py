"""The channel service: concurrency within a budget, failing-channel isolation, weight hot swap,
HTTP /retrieve with the per-item breakdown, and `twotower channels build` end to end."""
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient

from twotower.channels.config import validate_channels
from twotower.channels.service import ChannelService, learn_weights, replay
from twotower.channels.weights import WeightsFile
from twotower.serve.app import create_app


class Fake:
    def __init__(self, name, ids, delay=0.0, fail=False, fields=("user_id",)):
        self.name, self.ids, self.delay, self.fail, self.fields = name, ids, delay, fail, fields
        self.calls = 0

    def retrieve(self, requests, k, exclude=None):
        self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("backend down")
        ex = [set(e or []) for e in (exclude or [[]] * len(requests))]
        ids = [[i for i in self.ids if i not in ex[r]][:k] for r in range(len(requests))]
        return ids, [np.linspace(1, 0, len(x)) for x in ids]


def config(tmp_path, names, **merge):
    return validate_channels({"name": "t", "output": str(tmp_path / "out"),
                              "merge": {"n": 5, "fetch_k": 10, **merge},
                              "service": {"budget_ms": 300},
                              "channels": [{"name": n, "kind": "popularity", "log": "unused"}
                                           for n in names]})


def test_failing_and_slow_channels_are_reported_and_the_rest_answer(tmp_path):
    fakes = {"ok": Fake("ok", [1, 2, 3]), "slow": Fake("slow", [9], delay=2.0),
             "broken": Fake("broken", [8], fail=True)}
    svc = ChannelService(config(tmp_path, fakes), fakes)
    t0 = time.perf_counter()
    out = svc.retrieve([{"user_id": 1}], 5)
    assert time.perf_counter() - t0 < 1.5  # the budget, not the slow channel, bounds latency
    assert out["results"][0]["ids"] == [1, 2, 3]
    assert "timed out" in out["failed_channels"]["slow"]
    assert "backend down" in out["failed_channels"]["broken"]
    assert "ok" not in out["failed_channels"]
    svc.close()


def test_channels_run_concurrently(tmp_path):
    fakes = {f"c{i}": Fake(f"c{i}", [i], delay=0.2) for i in range(4)}
    svc = ChannelService(config(tmp_path, fakes, ), fakes)
    svc.cfg.service.budget_ms = 5000
    t0 = time.perf_counter()
    out = svc.retrieve([{"user_id": 1}], 5)
    assert time.perf_counter() - t0 < 0.6  # 4 x 0.2 s sequentially
    assert sorted(out["results"][0]["ids"]) == [0, 1, 2, 3] and not out["failed_channels"]
    svc.close()


def test_http_breakdown_exclusion_and_weight_hot_swap(tmp_path):
    fakes = {"a": Fake("a", [1, 2, 3, 4]), "b": Fake("b", [4, 5, 6, 7], fields=("history",))}
    cfg = config(tmp_path, fakes, exclude_field="history")
    svc = ChannelService(cfg, fakes)
    client = TestClient(create_app(channels=svc, max_k=20, api_key="k"))
    r = client.post("/retrieve", json={"queries": [{"user_id": 1, "history": [2]}], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"][0]
    assert 2 not in res["ids"] and res["ids"][0] == 4  # found by both channels
    assert set(res["channels"][0]) == {"a", "b"} and res["channels"][0]["a"]["rank"] == 2
    assert body["failed_channels"] == {}
    r = client.post("/retrieve", json={"queries": [{"usr": 1}]})
    assert r.status_code == 422 and "usr" in r.json()["detail"][0]["loc"]
    assert client.get("/health").json()["status"] == "ok"
    # new learned weights reach the live service without a restart
    WeightsFile(cfg.weights_path).save({"a": 0.0, "b": 2.0}, None, "test")
    v0 = body["index_version"]
    r = client.post("/admin/reload", headers={"X-API-Key": "k"})  # admin routes need a key
    assert r.status_code == 200 and r.json()["index_version"] != v0
    ids = client.post("/retrieve", json={"queries": [{"user_id": 1}], "k": 5}).json()["results"][0]["ids"]
    assert ids[:4] == [4, 5, 6, 7]
    assert client.get("/metadata").json()["weights"] == {"a": 0.0, "b": 2.0}
    svc.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, sim_dir):
    """A tiny DSSM run + a channels YAML over it, built with the CLI."""
    from twotower.config import merge
    from twotower.pipeline import train_run
    from twotower.presets import simulator_config
    from conftest import tiny_sections
    from typer.testing import CliRunner

    from twotower.cli import app

    root = tmp_path_factory.mktemp("channels")
    run = root / "dssm"
    train_run(simulator_config(sim_dir, run, **merge(tiny_sections(epochs=1), {})), overwrite=True)
    spec = {"name": "sim", "output": "built",
            "merge": {"n": 20, "fetch_k": 40, "calibration": "rrf"},
            "channels": [
                {"name": "dssm", "kind": "run", "run": str(run)},
                {"name": "i2i", "kind": "i2i", "run": str(run), "history_field": "history"},
                {"name": "cf", "kind": "itemcf", "log": str(sim_dir / "impressions.parquet"),
                 "user": "user_id", "item": "ad_id", "label": "click", "split_column": "split"},
                {"name": "pop", "kind": "popularity", "log": str(sim_dir / "impressions.parquet"),
                 "item": "ad_id", "timestamp": "timestamp", "half_life_days": 7, "label": "click"},
                {"name": "lex", "kind": "bm25", "items": str(sim_dir / "ads.parquet"),
                 "item": "ad_id", "text": ["ad_title", "ad_category"]}]}
    path = root / "channels.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(app, ["channels", "build", str(path)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["dssm"]["built_index"] == "flat" and report["lex"]["terms"] > 10
    bad = root / "bad.yaml"
    bad.write_text(yaml.safe_dump({"channels": [{"name": "cf", "kind": "itemcf", "log": "x", "recent": -1}]}))
    r = CliRunner().invoke(app, ["channels", "build", str(bad)])
    assert r.exit_code == 1 and "channel 'cf': recent" in r.output and "Traceback" not in r.output
    return path


def test_real_channels_merge_learn_and_replay(built, sim_dir):
    svc = ChannelService(built)
    imp = pq.read_table(sim_dir / "impressions.parquet").slice(0, 40).to_pylist()
    reqs = [{"user_id": r["user_id"], "query_text": r["query_text"], "history": [r["ad_id"]]}
            for r in imp]
    out = svc.retrieve(reqs, 20)
    assert out["failed_channels"] == {}
    found = {c for res in out["results"] for item in res["channels"] for c in item}
    assert found == {"dssm", "i2i", "cf", "pop", "lex"}
    assert all(len(res["ids"]) == 20 == len(set(res["ids"])) for res in out["results"])
    assert svc.retrieve(reqs, 20)["results"] == out["results"]  # deterministic
    # a feedback log of the merged top 40: clicks only on lexical finds -> lex gains weight, and
    # replayed at N = 20 the lex-heavy weights keep more of the clicked items than equal ones
    rows = []
    for i, (req, res) in enumerate(zip(reqs, svc.retrieve(reqs, 40)["results"])):
        for item, brk in zip(res["ids"], res["channels"]):
            rows.append({"request_id": i, **{k: req[k] for k in ("user_id", "query_text")},
                         "history": req["history"], "item_id": item, "channels": list(brk),
                         "click": int("lex" in brk)})
    log = built.parent / "feedback.parquet"
    pq.write_table(pa.Table.from_pylist(rows), log)
    learned = learn_weights(built, log)["weights"]
    assert max(learned, key=learned.get) == "lex"
    svc.reload()
    res = replay(svc, log, {"equal": {n: 1.0 for n in svc.channels}, "learned": svc.weights}, 20)
    assert res["learned"]["reward_per_request"] > res["equal"]["reward_per_request"]
    svc.close()


def test_serve_needs_a_run_or_channels():
    from typer.testing import CliRunner

    from twotower.cli import app

    r = CliRunner().invoke(app, ["serve"])
    assert r.exit_code == 1 and "--channels" in r.output and "Traceback" not in r.output


def test_math_threads_sets_torch_and_faiss_pools(tmp_path):
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    cfg = config(tmp_path, ["a"])
    cfg.service.math_threads = 1
    try:
        svc = ChannelService(cfg, {"a": Fake("a", [1, 2])})
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        assert svc.retrieve([{"user_id": 1}], 2)["results"][0]["ids"] == [1, 2]
        svc.close()
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
