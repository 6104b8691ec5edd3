"""GET /metrics (Prometheus text), request ids and JSON access logs, the inspector's data routes."""
import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from twotower.index.run_index import build_run_index
from twotower.pipeline import train_run
from twotower.presets import simulator_config
from twotower.serve.app import create_app
from twotower.serve.metrics import bucket_width_at, histogram_quantile


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sim_dir):
    from conftest import tiny_sections

    root = tmp_path_factory.mktemp("metrics")
    train_run(simulator_config(sim_dir, root / "run", **tiny_sections(epochs=1)), overwrite=True)
    build_run_index(root / "run", "flat")
    build_run_index(root / "run", "hnsw")  # v000002 = CURRENT
    return root / "run"


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_batches_reloads_and_index(run_dir):
    client = TestClient(create_app(run_dir, max_k=50, api_key="secret"))
    before = _samples(client.get("/metrics").text)
    for n in (1, 3):
        r = client.post("/retrieve", json={"queries": [{"user_id": 1, "query_text": "shoes"}] * n, "k": 5})
        assert r.status_code == 200
    assert client.post("/retrieve", json={"queries": [{"usr": 1}]}).status_code == 422
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", json={"version": "v000009"},
                       headers={"X-API-Key": "secret"}).status_code == 409
    assert client.post("/admin/reload", json={"version": "v000001"},
                       headers={"X-API-Key": "secret"}).status_code == 200
    scrape = client.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    after = _samples(scrape.text)
    ok = ("twotower_requests_total", {"route": "/retrieve", "method": "POST", "status": "200"})
    assert _value(after, ok[0], **ok[1]) - _value(before, ok[0], **ok[1]) == 2
    assert _value(after, "twotower_requests_total", route="/retrieve", method="POST", status="422") == 1
    assert _value(after, "twotower_reloads_total", outcome="ok") == 1
    assert _value(after, "twotower_reloads_total", outcome="refused") == 1
    assert _value(after, "twotower_reloads_total", outcome="unauthorized") == 1
    # batch sizes 1 and 3 reached the Retriever: count 2, sum 4, one in the le=2 bucket
    assert _value(after, "twotower_retrieve_batch_size_count") == 2
    assert _value(after, "twotower_retrieve_batch_size_sum") == 4
    assert _value(after, "twotower_retrieve_batch_size_bucket", le="2.0") == 1
    assert _value(after, "twotower_request_latency_seconds_count", route="/retrieve") == 3
    # after the reload the gauges describe v000001, the flat index
    assert _value(after, "twotower_index_version") == 1
    assert _value(after, "twotower_index_items") == client.get("/health").json()["count"] > 0
    assert _value(after, "twotower_index_info", version="v000001", kind="flat") == 1
    assert ("twotower_index_info", (("kind", "hnsw"), ("version", "v000002"))) not in after


def test_request_id_echoed_or_generated_and_logged_as_json(run_dir, caplog):
    client = TestClient(create_app(run_dir))
    with caplog.at_level(logging.INFO, logger="twotower.access"):
        r = client.get("/health", headers={"X-Request-ID": "abc-123"})
        r2 = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["X-Request-ID"] == "abc-123"
    generated = r2.headers["X-Request-ID"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "twotower.access"]
    assert [ln["request_id"] for ln in lines] == ["abc-123", generated]
    assert lines[0]["route"] == "/health" and lines[0]["status"] == 200 and lines[0]["ms"] >= 0


def test_histogram_quantile_interpolates_like_promql():
    text = """# HELP h x
# TYPE h histogram
h_bucket{le="0.1"} 10.0
h_bucket{le="0.2"} 30.0
h_bucket{le="+Inf"} 30.0
h_count 30.0
h_sum 3.0
"""
    assert histogram_quantile(text, "h", 0.5) == pytest.approx(0.1 + 0.1 * 5 / 20)
    assert histogram_quantile(text, "h", 0.2) == pytest.approx(0.06)
    assert bucket_width_at(0.15, (0.1, 0.2, 0.5)) == pytest.approx(0.1)
    assert bucket_width_at(0.15) <= 0.25 * 0.15 * 1.25  # default buckets: 25% apart


def test_inspector_routes_need_the_key_and_show_provenance(run_dir):
    client = TestClient(create_app(run_dir, api_key="secret", inspector=True))
    assert client.get("/inspector").status_code == 200  # the page holds no data
    page = client.get("/inspector").text
    assert "<script>" in page and "://" not in page  # self-contained: nothing fetched from elsewhere
    assert client.get("/inspector/api/info").status_code == 401
    h = {"X-API-Key": "secret"}
    info = client.get("/inspector/api/info", headers=h).json()
    assert info["versions"] == ["v000001", "v000002"] and "user_id" in info["query_columns"]
    body = {"query": {"user_id": 1, "query_text": "running shoes"}, "k": 5,
            "versions": ["v000002", "v000001"]}
    assert client.post("/inspector/api/search", json=body).status_code == 401
    cols = client.post("/inspector/api/search", json=body, headers=h).json()["columns"]
    assert [c["version"] for c in cols] == ["v000002", "v000001"]
    assert [c["kind"] for c in cols] == ["hnsw", "flat"]
    live = client.post("/retrieve", json={"queries": [body["query"]], "k": 5}).json()["results"][0]
    assert [r["id"] for r in cols[0]["results"]] == live["ids"]  # same answer as the service
    assert [r["score"] for r in cols[0]["results"]] == pytest.approx(live["scores"], abs=1e-5)
    assert all(r["vector"] == 0 and r["weight"] is None for r in cols[1]["results"])
    bad = client.post("/inspector/api/search", json={**body, "versions": ["../x"]}, headers=h)
    assert bad.status_code == 422
    assert client.post("/inspector/api/search", json={**body, "query": {"nope": 1}},
                       headers=h).status_code == 422


def test_access_log_follows_stderr_after_a_swapped_one_is_closed(capsys):
    """`twotower serve` under a CLI runner set the handler up on the runner's stderr, closed
    after the call: every later access line was a 'Logging error'. It now writes to the
    stderr of the moment."""
    import io
    import sys

    from twotower.serve.metrics import ACCESS_LOG, configure_access_log

    saved = (list(ACCESS_LOG.handlers), ACCESS_LOG.level, ACCESS_LOG.propagate)
    ACCESS_LOG.handlers = [h for h in ACCESS_LOG.handlers if not getattr(h, "_twotower", False)]
    swapped, real = io.StringIO(), sys.stderr
    try:
        sys.stderr = swapped
        configure_access_log()
        ACCESS_LOG.info('{"during": 1}')
        sys.stderr = real
        swapped.close()
        ACCESS_LOG.info('{"after": 1}')
    finally:
        sys.stderr = real
        ACCESS_LOG.handlers, ACCESS_LOG.level, ACCESS_LOG.propagate = saved
    err = capsys.readouterr().err
    assert '{"after": 1}' in err and "Logging error" not in err
