"""Optional OpenTelemetry tracing of /retrieve (serve/tracing.py), read back from an in-memory
exporter: the server span with its attributes, encode and search under it (or under the batch
span that links to every call it answered), errors recorded, nothing when tracing is off."""
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra (opentelemetry-sdk)")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from twotower.serve.app import create_app  # noqa: E402
from twotower.serve.batcher import BatchingConfig  # noqa: E402

QUERY = {"user_id": 7, "query_text": "running shoes"}


def traced(run, **kw):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TestClient(create_app(run, tracer_provider=provider, **kw)), exporter


def test_unbatched_call_has_encode_and_search_under_its_server_span(served_run):
    client, exporter = traced(served_run, batching=BatchingConfig(enabled=False))
    r = client.post("/retrieve", json={"queries": [QUERY, QUERY], "k": 5},
                    headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /retrieve", "encode", "search"}
    root = spans["POST /retrieve"]
    assert root.kind == SpanKind.SERVER and root.parent is None
    assert root.attributes["twotower.k"] == 5 and root.attributes["twotower.queries"] == 2
    assert root.attributes["twotower.request_id"] == "abc-123"
    assert root.attributes["twotower.index_version"] == r.json()["index_version"]
    assert root.attributes["http.response.status_code"] == 200
    for child in ("encode", "search"):
        assert spans[child].parent.span_id == root.context.span_id
        assert spans[child].context.trace_id == root.context.trace_id
    assert spans["search"].attributes["twotower.index_kind"] == "flat"
    assert spans["encode"].attributes["twotower.rows"] == 2
    # the search ran inside the request: its span lies within the server span's time
    assert root.start_time <= spans["search"].start_time <= spans["search"].end_time <= root.end_time


def test_a_batch_span_links_every_call_it_answered(served_run):
    client, exporter = traced(served_run, batching=BatchingConfig(max_wait_ms=50))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/retrieve", json={"queries": [QUERY], "k": 3})
                              .status_code, range(24)))
    assert codes == [200] * 24
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "POST /retrieve"]
    batches = [s for s in spans if s.name == "retrieve.batch"]
    assert len(calls) == 24 and 1 <= len(batches) <= 24
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(c.context.span_id for c in calls)  # each call, once
    assert sum(b.attributes["twotower.calls"] for b in batches) == 24
    batch_ids = {b.context.span_id for b in batches}
    work = [s for s in spans if s.name in ("encode", "search")]
    assert work and all(s.parent.span_id in batch_ids for s in work)


def test_a_failed_call_is_an_error_span_and_no_provider_means_no_spans(served_run):
    client, exporter = traced(served_run, batching=BatchingConfig(enabled=False))
    r = client.post("/retrieve", json={"queries": [{"query_text": ["a", "list"]}], "k": 3})
    assert r.status_code == 422 and "query_text" in r.text  # the Retriever refused the value
    root = next(s for s in exporter.get_finished_spans() if s.name == "POST /retrieve")
    assert root.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in root.events)
    # without a provider (and none set globally) the service answers the same and records nothing
    plain = TestClient(create_app(served_run))
    assert plain.post("/retrieve", json={"queries": [QUERY], "k": 3}).status_code == 200
