"""The retrieval inspector: ``twotower serve RUN_DIR --inspector`` -> ``GET /inspector``.

A self-contained page (``static/inspector.html``: HTML + JS, nothing from a CDN) where one types a
user id and a query (any query field of the run) and sees the top-K items of one index version,
or of two side by side: rank, raw id, score, the business weight folded into the index (and the
cosine before it), which query vector retrieved the item (multi-interest models search with every
vector and keep each item's best), and the channel when the retrieval result carries one.

Serving a merge of channels (``twotower serve --channels``), there is no per-vector index to
search: the page shows the service's own merged answer, and the channel column lists every
channel that found each item with its rank there (``MergedInspector``).

Data routes (``/inspector/api/...``) need the ``X-API-Key`` when the service has a key; the
page itself holds no data and asks for the key in a field.
"""
from __future__ import annotations

import hmac
import re
import threading
from collections import OrderedDict
from importlib import resources
from typing import Annotated, Any, Optional, Union

import numpy as np
from fastapi import Header, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from twotower.errors import ArtifactError, DataError
from twotower.index.ann import VectorIndex, index_root, load_index

Value = Union[int, float, str, list[Union[int, str]], None]


class InspectRequest(BaseModel):
    query: dict[str, Value] = Field(..., description="query features of one request")
    k: int = Field(10, ge=1, le=200)
    versions: list[Annotated[str, Field(pattern=r"^v\d{6}$")]] = Field(default_factory=list, max_length=2,
                                description="index versions to compare (default: the live one)")


def page_html() -> str:
    return resources.files("twotower.serve").joinpath("static/inspector.html").read_text()


class Inspector:
    """Per-vector search with provenance over any saved index version (two cached besides the
    live one); the live version's results also carry any extra per-item fields that
    ``Retriever.retrieve`` returns (e.g. ``channels``)."""

    def __init__(self, retriever, cache_size: int = 2):
        self.retriever = retriever
        self._cache: OrderedDict[str, VectorIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size
        self._weights: dict[str, dict] = {}

    def versions(self) -> list[str]:
        root = index_root(self.retriever.run.root)
        return sorted(d.name for d in root.iterdir() if re.fullmatch(r"v\d{6}", d.name)) \
            if root.is_dir() else []

    def _index(self, version: str) -> VectorIndex:
        live = self.retriever._live
        if version == live.version:
            return live.index
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
        vi = load_index(self.retriever.run.root, version, contract=self.retriever.contract)
        with self._lock:
            self._cache[version] = vi
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vi

    def _weight_lookup(self, column: str) -> dict:
        """raw item id -> business weight, from the run's item table (read once per column)."""
        if column not in self._weights:
            from twotower.data.readers import TableSource
            from twotower.runs import load_run_config

            cfg = load_run_config(self.retriever.run)
            if cfg.data.items is None:
                raise DataError(f"weight column {column!r}: the run has no data.items table")
            id_col = self.retriever.contract["item_id"]
            t = TableSource(cfg.data.items).read([id_col, column])
            self._weights[column] = dict(zip(t[id_col].to_pylist(), t[column].to_pylist()))
        return self._weights[column]

    def info(self) -> dict[str, Any]:
        meta = self.retriever.metadata()
        return {"model": meta.get("model"), "query_features": meta["query_features"],
                "item_id": meta.get("item_id")}

    def search(self, query: dict, k: int, version: str) -> dict[str, Any]:
        vi = self._index(version)
        q = self.retriever.encode([query])[0]  # [V, D]
        scores, labels = vi.search(np.ascontiguousarray(q, dtype=np.float32), k)  # [V, K] each
        best: dict[int, tuple[float, int]] = {}
        for v in range(q.shape[0]):  # keep each item's best vector (as the Retriever's merge)
            for s, lab in zip(scores[v], labels[v]):
                if lab >= 0 and (lab not in best or s > best[lab][0]):
                    best[int(lab)] = (float(s), v)
        top = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        ids = vi.raw_ids(np.array([lab for lab, _ in top], dtype=np.int64)) if top else []
        column = vi.manifest.get("weight_column")
        weights = self._weight_lookup(column) if column else {}
        rows = []
        for rank, ((lab, (score, vec)), raw) in enumerate(zip(top, ids), 1):
            w = weights.get(raw) if column else None
            rows.append({"rank": rank, "id": raw, "score": score, "weight": w,
                         "cosine": score / w if w else None, "vector": vec})
        out = {"version": version, "kind": vi.manifest.get("kind"), "count": vi.count,
               "weight_column": column, "vectors": int(q.shape[0]), "results": rows}
        if version == self.retriever.version:
            self._attach_extra(out, query, k)
        return out

    def _attach_extra(self, out: dict, query: dict, k: int) -> None:
        """Per-item fields of the Retriever's own answer (a list per result, aligned with its
        ids, e.g. ``channels``) are joined onto the rows by id."""
        res = self.retriever.retrieve([query], k)["results"][0]
        extra = {key: vals for key, vals in res.items() if key not in ("ids", "scores")
                 and isinstance(vals, list) and len(vals) == len(res["ids"])}
        if not extra:
            return
        by_id = {raw: i for i, raw in enumerate(res["ids"])}
        for row in out["results"]:
            i = by_id.get(row["id"])
            for key, vals in extra.items():
                row["channel" if key in ("channel", "channels") else key] = None if i is None else vals[i]


class MergedInspector:
    """The inspector of a service that merges several sources (a ``ChannelService``: the
    Retriever's serving interface, no per-vector index): each row is the service's own answer —
    rank, id, merged score — with its channel breakdown (channel -> rank there, 0 = its best,
    and scores). Only the live weights version answers: older weights are not kept loaded."""

    def __init__(self, service):
        self.retriever = service

    def versions(self) -> list[str]:
        return [self.retriever.version]

    def info(self) -> dict[str, Any]:
        meta = self.retriever.metadata()
        names = list(meta.get("channels") or {})
        return {"model": f"channels: {', '.join(names)}" if names else meta.get("model"),
                "query_features": meta.get("query_features") or {}, "item_id": meta.get("item_id")}

    def search(self, query: dict, k: int, version: str) -> dict[str, Any]:
        if version != self.retriever.version:
            raise ArtifactError(f"version {version}: the merged service answers with its live "
                                f"weights ({self.retriever.version}) only")
        out = self.retriever.retrieve([query], k)
        res = out["results"][0]
        found = res.get("channels") or [None] * len(res["ids"])
        rows = [{"rank": rank, "id": raw, "score": float(score), "weight": None, "cosine": None,
                 "vector": 0, "channel": by}
                for rank, (raw, score, by) in enumerate(zip(res["ids"], res["scores"], found), 1)]
        index = self.retriever.index
        return {"version": version, "kind": index.manifest.get("kind", "merged"),
                "count": index.count, "weight_column": None, "vectors": 1, "results": rows,
                "failed": out.get("failed_channels") or {}}


def inspector_for(retriever) -> Inspector | MergedInspector:
    """Per-vector provenance for a run's Retriever (it encodes queries); the merged answer of a
    service that does not (channels)."""
    return Inspector(retriever) if callable(getattr(retriever, "encode", None)) else MergedInspector(retriever)


def install_inspector(app, retriever, api_key: str | None) -> Inspector | MergedInspector:
    """``GET /inspector`` (the page) and its data routes under ``/inspector/api``."""
    inspector = inspector_for(retriever)
    app.state.inspector = inspector

    def check(key: Optional[str]) -> None:
        if api_key is not None and not (key and hmac.compare_digest(key.encode(), api_key.encode())):
            raise HTTPException(401, "missing or wrong X-API-Key")

    @app.get("/inspector", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/inspector/api/info")
    def info(x_api_key: Optional[str] = Header(None)) -> dict:
        check(x_api_key)
        return {"live": retriever.version, "versions": inspector.versions(),
                "query_columns": retriever.query_columns, **inspector.info(),
                "key_required": api_key is not None}

    @app.post("/inspector/api/search")
    def search(req: InspectRequest, x_api_key: Optional[str] = Header(None)) -> dict:
        check(x_api_key)
        unknown = sorted(set(req.query) - set(retriever.query_columns))
        if unknown:
            raise HTTPException(422, [{"loc": ["body", "query", unknown[0]], "type": "value_error",
                                       "msg": f"unknown field; query fields are "
                                              f"{', '.join(retriever.query_columns)}"}])
        versions = req.versions or [retriever.version]
        try:
            return {"columns": [inspector.search(req.query, req.k, v) for v in versions]}
        except ArtifactError as err:
            raise HTTPException(404, str(err)) from None
        except DataError as err:
            raise HTTPException(422, [{"loc": ["body", "query"], "msg": str(err),
                                       "type": "value_error"}]) from None

    return inspector
