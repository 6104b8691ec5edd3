"""Optional OpenTelemetry tracing of ``/retrieve`` (``pip install 'twotower[tracing]'``).

Every ``/retrieve`` call gets a server span ``POST /retrieve`` (its ``k``, query count, request
id, index version, status), and the work it waits for gets spans of its own: ``encode`` (features
-> query vectors) and ``search`` (the index). With micro-batching (``serve/batcher.py``) one
worker answers many calls at once, so that work is one ``retrieve.batch`` span that *links* to
the span of every call it answered (OpenTelemetry's way of saying "caused by several"), with
``encode`` and ``search`` under it; without batching they sit under the call's own span.

The code uses the OpenTelemetry API only; without ``opentelemetry-api`` installed every span is
a no-op (``nullcontext``). Spans go to the tracer provider given to ``create_app`` (tests pass one
with an in-memory exporter), else to the process's global one, which ``twotower serve --trace``
sets up (``configure_tracing``: OTLP when ``opentelemetry-exporter-otlp`` is installed, else the
console).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

from twotower.errors import ConfigError

TRACER_NAME = "twotower.serve"


class Tracing:
    """Spans of the service, from ``provider`` (None: the global provider)."""

    def __init__(self, provider: Any = None):
        try:
            from opentelemetry import trace
        except ImportError:  # tracing is an extra: without the API, spans cost nothing
            self._trace, self.tracer = None, None
            return
        self._trace = trace
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)

    @contextmanager
    def span(self, name: str, attributes: dict[str, Any] | None = None,
             links: Sequence[Any] = (), server: bool = False) -> Iterator[Any]:
        """A span around the block (``None`` inside when tracing is off); an exception leaving
        the block is recorded on it and marks it as an error."""
        if self.tracer is None:
            with nullcontext():
                yield None
            return
        kind = self._trace.SpanKind.SERVER if server else self._trace.SpanKind.INTERNAL
        links = [self._trace.Link(c) for c in links if c is not None and c.is_valid]
        with self.tracer.start_as_current_span(name, kind=kind, links=links,
                                               attributes=_clean(attributes)) as span:
            yield span

    def current(self) -> Any:
        """The current span's context (to link a batch to the calls it answers), or None."""
        if self._trace is None:
            return None
        ctx = self._trace.get_current_span().get_span_context()
        return ctx if ctx.is_valid else None


def set_attributes(span: Any, attributes: dict[str, Any]) -> None:
    if span is not None:
        span.set_attributes(_clean(attributes))


def _clean(attributes: dict[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry takes str / bool / int / float values only: drop the None ones."""
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def configure_tracing(service_name: str = "twotower") -> str:
    """Set the global tracer provider for ``twotower serve --trace``; returns where spans go."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigError("--trace needs the OpenTelemetry SDK: pip install 'twotower[tracing]' "
                          "(opentelemetry-sdk)") from None
    try:  # OTLP (OTEL_EXPORTER_OTLP_ENDPOINT etc.) when its exporter is installed
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter, where = OTLPSpanExporter(), "OTLP"
    except ImportError:
        exporter, where = ConsoleSpanExporter(), "the console (stdout)"
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return where
