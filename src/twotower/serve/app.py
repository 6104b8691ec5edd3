"""HTTP retrieval service (FastAPI): ``twotower serve RUN_DIR``.

Routes: ``POST /retrieve`` (query features as JSON -> ids, scores, index version), ``GET /health``,
``GET /metadata``, ``POST /admin/reload`` (hot swap to the CURRENT index version, or a named one),
Swagger UI at ``/docs`` from local files. Secure by default (``serve/security.py``): admin routes
are off until an admin key is set, ``/retrieve`` and ``/metadata`` take an optional client key,
CORS is opt-in, bodies are capped by the bytes read (413), error bodies carry no paths.
Validation is strict and 422s name the field; k is capped; unknown ids go to OOV.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr, WithJsonSchema

from twotower.errors import ArtifactError, DataError
from twotower.serve.batcher import BatchingConfig, attach_batching
from twotower.serve.inspector import install_inspector
from twotower.serve.metrics import configure_access_log, install_metrics
from twotower.serve.retriever import INT64_MAX, INT64_MIN, RequestFieldError, Retriever
from twotower.serve.security import (SecurityConfig, admin_guard, client_guard,
                                     install_error_handlers, install_middleware, public_message)
from twotower.serve.tracing import Tracing, set_attributes

Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
# checked against each field's feature kind by the Retriever (one clear message per field)
QueryValue = Annotated[Any, WithJsonSchema({"anyOf": [
    {"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "null"},
    {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}]})]


class RetrieveRequest(BaseModel):
    queries: list[dict[str, QueryValue]] = Field(
        ..., min_length=1, description="one object of query features per request: ids are "
        "integers or strings, text a string, dense a finite number, sequences a list of ids")
    k: Annotated[StrictInt, Field(ge=1)] = Field(10, description="results per query (at most "
                                                 "the server's max_k)")
    exclude: Optional[list[list[Union[Int64, StrictStr]]]] = Field(
        None, description="per query: raw item ids never to return")


class RetrieveResponse(BaseModel):
    results: list[dict[str, Any]]
    index_version: str
    failed_channels: Optional[dict[str, str]] = None  # multi-channel service: channel -> why


class ReloadRequest(BaseModel):
    version: Optional[StrictStr] = Field(None, pattern=r"^v\d{6}$")


def create_app(run_dir: str | Path | None = None, retriever: Retriever | None = None,
               max_k: int = 1000, max_batch: int = 1024, max_body_bytes: int = 1 << 20,
               api_key: str | None = None, security: SecurityConfig | None = None,
               docs: bool = True, inspector: bool = False, channels: Any = None,
               batching: BatchingConfig | None = None, tracer_provider: Any = None) -> FastAPI:
    """The app over ``retriever`` (or a new one of ``run_dir``). ``security`` carries the keys,
    CORS origins and body limit (default: from ``api_key`` / ``max_body_bytes``, no client key,
    no CORS); ``docs``: Swagger UI at /docs from local files; ``inspector``: the /inspector page;
    ``batching``: how concurrent /retrieve calls share one forward and search (serve/batcher.py).
    ``channels``: a ``twotower.channels.ChannelService`` served in place of one run's
    ``Retriever`` (same interface; each result gains a per-item ``channels`` breakdown).
    ``tracer_provider``: where the OpenTelemetry spans of /retrieve go (serve/tracing.py; default
    the global provider, a no-op unless one is set)."""
    retriever = channels or retriever or Retriever(run_dir)
    tracing = Tracing(tracer_provider)
    if isinstance(retriever, Retriever):
        retriever.tracing = tracing
    security = security or SecurityConfig(api_key=api_key, max_body_bytes=max_body_bytes)
    app = FastAPI(title="twotower retrieval", version="1", docs_url=None, redoc_url=None)
    app.state.retriever = retriever
    roots = _run_roots(retriever)
    install_error_handlers(app, roots=roots)
    install_middleware(app, security)
    answer = attach_batching(app, retriever, batching, tracing)  # serve/batcher.py: concurrent calls batched
    if docs:
        from twotower.serve.docs import mount_offline_docs

        mount_offline_docs(app)
    client, admin = Depends(client_guard(security)), Depends(admin_guard(security))

    def _error(loc: list, msg: str) -> HTTPException:
        return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])

    @app.post("/retrieve", response_model=RetrieveResponse, dependencies=[client])
    async def retrieve(req: RetrieveRequest, request: Request):
        if req.k > max_k:
            raise _error(["body", "k"], f"k must be at most {max_k}")
        if len(req.queries) > max_batch:
            raise _error(["body", "queries"], f"at most {max_batch} queries per request")
        if req.exclude is not None and len(req.exclude) != len(req.queries):
            raise _error(["body", "exclude"], "needs one list per query")
        cols = set(retriever.query_columns)
        for i, q in enumerate(req.queries):
            bad = sorted(set(q) - cols)
            if bad:
                raise _error(["body", "queries", i, bad[0]],
                             f"unknown field; query fields are {', '.join(sorted(cols))}")
        try:
            with tracing.span("POST /retrieve", {
                    "http.request.method": "POST", "http.route": "/retrieve", "twotower.k": req.k,
                    "twotower.queries": len(req.queries),
                    "twotower.request_id": getattr(request.state, "request_id", None)},
                    server=True) as span:
                response = await answer(req.queries, req.k, req.exclude)
                set_attributes(span, {"twotower.index_version": retriever.version,
                                      "http.response.status_code": response.status_code})
                return response
        except RequestFieldError as err:
            raise _error(["body", "queries", err.row, err.field], str(err)) from None
        except DataError as err:
            raise _error(["body", "queries"], public_message(str(err), roots)) from None

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "index_version": retriever.version, "count": retriever.index.count,
                "worker": os.getpid()}  # which replica answered (serve --workers N)

    @app.get("/metadata", dependencies=[client])
    def metadata() -> dict:
        return retriever.metadata()

    @app.post("/admin/reload", dependencies=[admin])
    def reload(req: Optional[ReloadRequest] = None) -> dict:
        old = retriever.version
        try:
            new = retriever.reload(req.version if req else None)
        except ArtifactError as err:
            raise HTTPException(409, f"reload refused, still serving {old}: "
                                f"{public_message(str(err), roots)}") from None
        return {"previous": old, "index_version": new}

    # observability and the inspector live in their own modules (serve/metrics.py, inspector.py)
    install_metrics(app, retriever)
    if inspector:
        install_inspector(app, retriever, security.api_key or security.client_key)
    return app


def _run_roots(retriever: Any) -> list[Path]:
    """Run folders whose paths error bodies show relative (a channel service may have none)."""
    run = getattr(retriever, "run", None)
    return [run.root] if getattr(run, "root", None) is not None else []


def serve(run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_k: int = 1000, inspector: bool = False,
          channels: Any = None, client_key: str | None = None,
          cors_origins: tuple[str, ...] = (), docs: bool = True,
          batching: BatchingConfig | None = None) -> None:
    """``channels``: an opened ``ChannelService`` to serve instead of ``run_dir``'s retriever
    (the CLI opens it: serve never imports the channels stage, which sits above it)."""
    import uvicorn

    security = SecurityConfig(api_key=api_key, client_key=client_key,
                              cors_origins=tuple(cors_origins))
    app = create_app(run_dir, max_k=max_k, security=security, docs=docs, inspector=inspector,
                     channels=channels, batching=batching)
    configure_access_log()  # once the app is up: a run that fails to open installs nothing
    uvicorn.run(app, host=host, port=port, log_level="warning")
