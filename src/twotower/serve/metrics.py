"""Observability of the HTTP service: ``GET /metrics`` (Prometheus text format, prometheus-client)
and one structured JSON access-log line per request, tied together by a request id.

Metrics (one registry per app, so several apps in one process never share counters):

- ``twotower_requests_total{route, method, status}``: every request, by route template
- ``twotower_request_latency_seconds{route}``: time inside the app, histogram
- ``twotower_retrieve_batch_size``: queries per call that reaches the Retriever (after any
  request batching in front of it, i.e. the batches actually encoded and searched)
- ``twotower_index_version`` (the number of ``vNNNNNN``), ``twotower_index_items``,
  ``twotower_index_info{version, kind}``: read from the live index at scrape time
- ``twotower_reloads_total{outcome}``: ``POST /admin/reload`` answered ok / refused / unauthorized

The request id is the client's ``X-Request-ID`` when it is a sane token (<= 128 characters of
letters, digits, ``._-``), else a fresh one; it is echoed in the response's ``X-Request-ID``
header and logged on the ``twotower.access`` logger.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ACCESS_LOG = logging.getLogger("twotower.access")
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: Latency buckets (seconds): geometric, 25% apart from 1 ms to ~9 s (42 buckets), so a quantile
#: read from the histogram is within a quarter of its value wherever the load puts it.
LATENCY_BUCKETS = tuple(float(f"{0.001 * 1.25 ** i:.4g}") for i in range(42))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
RELOAD_OUTCOMES = {200: "ok", 409: "refused", 401: "unauthorized", 403: "unauthorized"}


class ServiceMetrics:
    """The service's Prometheus metrics; :func:`install_metrics` wires them into an app."""

    def __init__(self, retriever):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("twotower_requests", "HTTP requests by route template, method "
                                "and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("twotower_request_latency_seconds", "Time spent in the app per "
                                 "request", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("twotower_retrieve_batch_size", "Queries per Retriever call",
                               buckets=BATCH_BUCKETS, registry=r)
        self.reloads = Counter("twotower_reloads", "Index reloads by outcome", ["outcome"],
                               registry=r)
        for outcome in ("ok", "refused", "unauthorized"):
            self.reloads.labels(outcome)  # exported as 0 before the first reload
        self.retriever = retriever
        Gauge("twotower_index_version", "Number of the live index version (vNNNNNN)",
              registry=r).set_function(lambda: _version_number(self.retriever.version))
        Gauge("twotower_index_items", "Items in the live index",
              registry=r).set_function(lambda: float(self.retriever.index.count))
        self.info = Gauge("twotower_index_info", "The live index (value 1)", ["version", "kind"],
                          registry=r)
        self._info_labels: tuple[str, str] | None = None

    def scrape(self) -> bytes:
        labels = (self.retriever.version, str(self.retriever.index.manifest.get("kind")))
        if labels != self._info_labels:  # one series: the version being served now
            if self._info_labels is not None:
                self.info.remove(*self._info_labels)
            self.info.labels(*labels).set(1)
            self._info_labels = labels
        return generate_latest(self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if route == "/admin/reload" and method == "POST" and status in RELOAD_OUTCOMES:
            self.reloads.labels(RELOAD_OUTCOMES[status]).inc()


def _version_number(version: str) -> float:
    m = re.fullmatch(r"v(\d+)", version or "")
    return float(m.group(1)) if m else 0.0


def request_id(headers) -> str:
    given = headers.get(REQUEST_ID_HEADER.lower()) or headers.get(REQUEST_ID_HEADER)
    return given if given and _SANE_ID.fullmatch(given) else uuid.uuid4().hex


def _observe_batches(retriever, metrics: ServiceMetrics) -> None:
    """Count the queries of every Retriever call. The method is wrapped on this instance (not
    in the handler) so that batching added in front of the Retriever is measured as it runs."""
    inner = retriever.retrieve

    def retrieve(requests, *args, **kwargs):
        n = requests.num_rows if hasattr(requests, "num_rows") else len(requests)
        metrics.batch.observe(n)
        return inner(requests, *args, **kwargs)

    retriever.retrieve = retrieve


class ObserveMiddleware:
    """Pure ASGI middleware (outermost): request id, counters, latency, access log. Pure ASGI, not
    ``BaseHTTPMiddleware``, so the time it measures is the request's whole life inside the app
    and it adds no task group per request."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        t0 = time.perf_counter()
        rid = request_id(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = rid
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.lower().encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, seconds)
            _log_access(rid, scope, route, status, seconds)


def install_metrics(app, retriever) -> ServiceMetrics:
    """Add ``GET /metrics``, the request-id + access-log middleware and the counters to ``app``
    (call it last in ``create_app``: the middleware added last is the outermost)."""
    from fastapi import Response

    metrics = ServiceMetrics(retriever)
    app.state.metrics = metrics
    _observe_batches(retriever, metrics)
    app.add_middleware(ObserveMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _log_access(rid: str, scope, route: str, status: int, seconds: float) -> None:
    if not ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    record: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                              "request_id": rid, "method": scope["method"],
                              "path": scope["path"], "route": route, "status": status,
                              "ms": round(seconds * 1000, 3),
                              "client": client[0] if client else None}
    ACCESS_LOG.info(json.dumps(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was when
    the handler was made: a caller that swaps stderr for a while (a CLI runner, a test's capture)
    closes that stream afterwards, and every later access line would be a 'Logging error'."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; stderr is always looked up
        pass


def configure_access_log(stream=None) -> None:
    """JSON lines on stderr, or on ``stream`` (the message is already JSON: no prefix)."""
    if any(getattr(h, "_twotower", False) for h in ACCESS_LOG.handlers):
        return
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._twotower = True  # type: ignore[attr-defined]
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


# ---------------------------------------------------------------- reading a scrape back
def histogram_buckets(text: str, name: str, labels: dict[str, str] | None = None
                      ) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of histogram ``name`` in a Prometheus text scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            if s.name == name + "_bucket" and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                buckets.append((float(s.labels["le"]), s.value))
    if not buckets:
        raise KeyError(f"no histogram {name!r} with labels {labels} in the scrape")
    return sorted(buckets)


def bucket_delta(after: list[tuple[float, float]], before: list[tuple[float, float]]
                 ) -> list[tuple[float, float]]:
    """The observations between two scrapes of one histogram (same buckets)."""
    prior = dict(before)
    return [(le, count - prior.get(le, 0.0)) for le, count in after]


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of cumulative buckets, interpolated inside its bucket as PromQL's
    ``histogram_quantile`` does (what a dashboard would show)."""
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return float("nan")
    rank = q * total
    lo_edge, lo_count = 0.0, 0.0
    for edge, count in buckets:
        if count >= rank:
            if edge == float("inf"):
                return lo_edge
            return lo_edge + (edge - lo_edge) * (rank - lo_count) / max(count - lo_count, 1e-12)
        lo_edge, lo_count = edge, count
    return buckets[-1][0]


def histogram_quantile(text: str, name: str, q: float, labels: dict[str, str] | None = None) -> float:
    """The ``q`` quantile of histogram ``name`` in a scrape (see :func:`quantile_from_buckets`)."""
    return quantile_from_buckets(histogram_buckets(text, name, labels), q)


def bucket_width_at(value: float, buckets=LATENCY_BUCKETS) -> float:
    """Width of the latency bucket holding ``value`` (the resolution of a histogram quantile)."""
    lo = 0.0
    for edge in buckets:
        if value <= edge:
            return edge - lo
        lo = edge
    return float("inf")
