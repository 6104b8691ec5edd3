"""HTTP retrieval service (FastAPI): ``twotower serve RUN_DIR``.

Routes: ``POST /retrieve`` (query features as JSON -> ids, scores, index version), ``GET /health``,
``GET /metadata``, ``POST /admin/reload`` (hot swap to the CURRENT index version, or a named one;
guarded by an API key when one is set), OpenAPI docs at ``/docs``. Validation errors are 422s that
name the field; k is capped; bodies over ``max_body_bytes`` get 413; unknown ids go to OOV.
"""
from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from twotower.errors import ArtifactError, DataError
from twotower.serve.inspector import install_inspector
from twotower.serve.metrics import configure_access_log, install_metrics
from twotower.serve.retriever import Retriever

Value = Union[int, float, str, list[Union[int, str]], None]


class RetrieveRequest(BaseModel):
    queries: list[dict[str, Value]] = Field(..., min_length=1,
                                            description="one object of query features per request")
    k: int = Field(10, ge=1, description="results per query (at most the server's max_k)")
    exclude: Optional[list[list[Union[int, str]]]] = Field(
        None, description="per query: raw item ids never to return")


class RetrieveResponse(BaseModel):
    results: list[dict[str, Any]]
    index_version: str
    failed_channels: Optional[dict[str, str]] = None  # multi-channel service: channel -> why


class ReloadRequest(BaseModel):
    version: Optional[str] = Field(None, pattern=r"^v\d{6}$")


def create_app(run_dir: str | Path | None = None, retriever: Retriever | None = None,
               max_k: int = 1000, max_batch: int = 1024, max_body_bytes: int = 1 << 20,
               api_key: str | None = None, inspector: bool = False,
               channels: Any = None) -> FastAPI:
    """``channels``: a ``twotower.channels.ChannelService`` served in place of one run's
    ``Retriever`` (same interface; each result gains a per-item ``channels`` breakdown)."""
    retriever = channels or retriever or Retriever(run_dir)
    app = FastAPI(title="twotower retrieval", version="1")
    app.state.retriever = retriever

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return JSONResponse({"detail": f"request body over {max_body_bytes} bytes"}, 413)
        return await call_next(request)

    def _error(loc: list, msg: str) -> HTTPException:
        return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])

    @app.post("/retrieve", response_model=RetrieveResponse)
    def retrieve(req: RetrieveRequest) -> dict:
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
            return retriever.retrieve(req.queries, req.k, req.exclude)
        except DataError as err:
            raise _error(["body", "queries"], str(err)) from None

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "index_version": retriever.version, "count": retriever.index.count}

    @app.get("/metadata")
    def metadata() -> dict:
        return retriever.metadata()

    @app.post("/admin/reload")
    def reload(req: Optional[ReloadRequest] = None,
               x_api_key: Optional[str] = Header(None)) -> dict:
        if api_key is not None and not (x_api_key and hmac.compare_digest(x_api_key, api_key)):
            raise HTTPException(401, "missing or wrong X-API-Key")
        old = retriever.version
        try:
            new = retriever.reload(req.version if req else None)
        except ArtifactError as err:
            raise HTTPException(409, f"reload refused, still serving {old}: {err}") from None
        return {"previous": old, "index_version": new}

    # observability and the inspector live in their own modules (serve/metrics.py, inspector.py)
    install_metrics(app, retriever)
    if inspector:
        install_inspector(app, retriever, api_key)
    return app


def serve(run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_k: int = 1000, workers_threads: int | None = None,
          inspector: bool = False, channels: Any = None) -> None:
    """``channels``: an opened ``ChannelService`` to serve instead of ``run_dir``'s retriever
    (the CLI opens it: serve never imports the channels stage, which sits above it)."""
    import uvicorn

    configure_access_log()
    app = create_app(run_dir, max_k=max_k, api_key=api_key, inspector=inspector, channels=channels)
    uvicorn.run(app, host=host, port=port, log_level="warning")
