"""``Retriever``: a trained run's feature encoders + query tower + index, answering top-K in batches.

    from twotower.serve.retriever import Retriever
    r = Retriever("runs/simulator")
    r.retrieve([{"user_id": 6, "query_text": "running shoes"}], k=10)
    # -> [{"ids": [...], "scores": [...]}], plus r.version

Multi-vector queries (V > 1, multi-interest models): every vector is searched, results are merged
by max score per item, deduplicated and cut to K. Unknown ids / values go to OOV. ``reload()``
loads the CURRENT index version beside the live one and swaps a single reference, so requests in
flight finish on the index they started with; a corrupt new version is refused and the old one
keeps serving.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from twotower.errors import DataError
from twotower.features.dataset import as_tensors
from twotower.index.ann import VectorIndex, load_index
from twotower.runs import load_run
from twotower.serve.tracing import Tracing
from twotower.types import FeatureKind, Side


def merge_multi_vector(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, M] candidates (M = V·k', duplicates allowed, label -1 = none) -> top-k by max score.

    Vectorised: a stable sort by (row, label, -score) keeps each (row, label)'s best score first;
    later duplicates are dropped, then every row is sorted by score and cut to k.
    """
    b, m = scores.shape
    s = np.where(labels < 0, -np.inf, scores).astype(np.float32)
    rows = np.repeat(np.arange(b), m)
    lab, sc = labels.reshape(-1), s.reshape(-1)
    order = np.lexsort((-sc, lab, rows))
    r_o, l_o = rows[order], lab[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (r_o[1:] == r_o[:-1]) & (l_o[1:] == l_o[:-1])
    sc2 = sc.copy()
    sc2[order[dup]] = -np.inf
    sc2 = sc2.reshape(b, m)
    kk = min(k, m)
    top = np.argsort(-sc2, axis=1, kind="stable")[:, :kk]
    out_s = np.take_along_axis(sc2, top, 1)
    out_l = np.take_along_axis(labels, top, 1)
    out_l = np.where(np.isfinite(out_s), out_l, -1)
    return out_s, out_l


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class RequestFieldError(DataError):
    """A request value of the wrong type for its feature: names the field and the query."""

    def __init__(self, field: str, row: int, message: str):
        super().__init__(message)
        self.field, self.row = field, row


def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, np.integer) and not isinstance(v, np.bool_))


def _id_problem(v: Any) -> str | None:
    """Why ``v`` is not an id (an int64 integer or a string); None when it is one."""
    if isinstance(v, str):
        return None
    if _is_int(v):
        return None if INT64_MIN <= int(v) <= INT64_MAX else "integer outside the int64 range"
    return f"expected an integer or string id, got {_json_type(v)}"


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, float):
        return f"a floating-point number ({v})" if math.isfinite(v) else f"{v}"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def value_problem(kind: FeatureKind, v: Any) -> str | None:
    """Why request value ``v`` does not fit a ``kind`` feature (strict: no bool-as-int, no
    stringified lists, no non-finite numbers); None when it fits. ``None`` values are missing."""
    if v is None:
        return None
    if kind == FeatureKind.SEQUENCE:
        for x in (v if isinstance(v, list) else [v]):
            why = _id_problem(x)
            if why:
                return f"sequence element: {why}"
        return None
    if kind == FeatureKind.TEXT:
        return None if isinstance(v, str) else f"expected a string, got {_json_type(v)}"
    if kind == FeatureKind.DENSE:
        if _is_int(v) or (isinstance(v, (float, np.floating)) and math.isfinite(v)):
            return None
        return f"expected a finite number, got {_json_type(v)}"
    return _id_problem(v)  # categorical / hashed ids


@dataclass
class Loaded:
    """One index version (what a request holds on to while it runs)."""

    index: VectorIndex
    version: str


class RequestEncoder:
    """JSON requests -> a run's query-side features, checked field by field (a wrong type names
    the field and the query); unknown ids / values go to OOV. Shared by every server of a run
    (the index ``Retriever``, the PDN trigger-path channel)."""

    def __init__(self, features):
        self.features = features
        self.query_features = features.query_features
        self.query_columns = features.columns(Side.QUERY)

    def _column(self, name: str, values: list) -> pa.Array:
        kinds = {self.features.configs[n].kind for n in self.query_features
                 if self.features.configs[n].source == name}
        kind = next(iter(kinds))
        for row, v in enumerate(values):
            why = value_problem(kind, v)
            if why:
                raise RequestFieldError(name, row, f"field {name!r} of query {row}: {why} "
                                        f"(a {kind.value} feature)")
        present = [v for v in values if v is not None]
        try:
            if kind in (FeatureKind.SEQUENCE,):
                if any(isinstance(x, str) for v in present for x in (v if isinstance(v, list) else [v])):
                    return pa.array([None if v is None else [str(x) for x in (v if isinstance(v, list) else [v])]
                                     for v in values], pa.list_(pa.string()))
                return pa.array([None if v is None else (v if isinstance(v, list) else [v])
                                 for v in values], pa.list_(pa.int64()))
            if kind == FeatureKind.TEXT:
                return pa.array([None if v is None else str(v) for v in values], pa.string())
            if kind == FeatureKind.DENSE:
                return pa.array([None if v is None else float(v) for v in values], pa.float64())
            if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                               for v in present):
                return pa.array(values, pa.int64())
            return pa.array([None if v is None else str(v) for v in values], pa.string())
        except (TypeError, ValueError, OverflowError, pa.ArrowInvalid) as err:
            raise DataError(f"field {name!r}: bad value for a {kind.value} feature ({err})") from None

    def to_table(self, requests: Sequence[dict] | pa.Table) -> pa.Table:
        if isinstance(requests, pa.Table):
            missing = [c for c in self.query_columns if c not in requests.column_names]
            for c in missing:
                requests = requests.append_column(c, pa.nulls(requests.num_rows))
            return requests
        unknown = sorted({k for r in requests for k in r} - set(self.query_columns))
        if unknown:
            raise DataError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"query fields are {', '.join(self.query_columns)}")
        return pa.table({c: self._column(c, [r.get(c) for r in requests])
                         for c in self.query_columns})

    def tensors(self, requests: Sequence[dict] | pa.Table) -> dict[str, torch.Tensor]:
        """Encoded query-side feature tensors of the requests."""
        return as_tensors(self.features.encode(self.to_table(requests), Side.QUERY, count=False))


class Retriever:
    def __init__(self, run_dir: str | Path, version: str | None = None, batch_size: int = 1024,
                 threads: int | None = None, mmap: bool = False):
        trained = load_run(run_dir)
        self.run = trained.dir
        self.contract = trained.contract
        self.features = trained.features
        self.model = trained.model
        self.batch_size = batch_size
        self.mmap = mmap  # map index files read-only (shared page cache across worker processes)
        self.request_encoder = RequestEncoder(self.features)
        self.query_features = self.request_encoder.query_features
        self.query_columns = self.request_encoder.query_columns
        self.tracing = Tracing()  # create_app hands it the app's (spans: encode, search)
        self._swap_lock = threading.Lock()
        self._live = self._load(version)
        if threads:
            torch.set_num_threads(threads)

    # ---- index versions
    def _load(self, version: str | None) -> Loaded:
        vi = load_index(self.run.root, version, contract=self.contract, mmap=self.mmap)
        return Loaded(vi, vi.version or "")

    @property
    def version(self) -> str:
        return self._live.version

    @property
    def index(self) -> VectorIndex:
        return self._live.index

    def reload(self, version: str | None = None) -> str:
        """Load ``version`` (default CURRENT) beside the live index and swap; raises on a bad one."""
        with self._swap_lock:
            new = self._load(version)  # ArtifactError here leaves the live index untouched
            self._live = new  # one reference assignment: atomic for concurrent readers
            return new.version

    def metadata(self) -> dict:
        m = self._live.index.manifest
        return {"index_version": self._live.version, "kind": m["kind"], "params": m["params"],
                "count": self._live.index.count, "dim": m["dim"], "metric": m["metric"],
                "weight_column": m.get("weight_column"), "created": m.get("created"),
                "model": self.contract.get("model"), "model_sha256": m.get("model_sha256"),
                "item_id": self.contract.get("item_id"),
                "query_features": {n: self.features.configs[n].kind.value
                                   for n in self.query_features},
                "query_columns": self.query_columns}

    def to_table(self, requests: Sequence[dict] | pa.Table) -> pa.Table:
        return self.request_encoder.to_table(requests)

    @torch.no_grad()
    def encode(self, requests: Sequence[dict] | pa.Table) -> np.ndarray:
        """Query vectors [B, V, D] of the requests (unknown values -> OOV)."""
        feats = self.request_encoder.tensors(requests)
        q = self.model.retrieval_query(self.model.encode_query(feats)).float()
        if self.contract.get("normalized"):
            q = torch.nn.functional.normalize(q, dim=-1)
        return q.numpy()

    def search_vectors(self, q: np.ndarray, k: int, exclude: list[list] | None = None,
                       live: Loaded | None = None) -> tuple[np.ndarray, np.ndarray, Loaded]:
        """(scores [B, K], labels [B, K], index used) for query vectors [B, V, D] or [B, D]."""
        live = live or self._live
        if q.ndim == 2:
            q = q[:, None]
        b, v, d = q.shape
        ex_labels = None
        extra = 0
        if exclude is not None:
            ex_labels = [live.index.labels_of(list(e or [])) for e in exclude]
            extra = max((int((e >= 0).sum()) for e in ex_labels), default=0)
        kk = k + extra
        s, lab = live.index.search(q.reshape(b * v, d), kk)
        s, lab = s.reshape(b, -1), lab.reshape(b, -1)
        if ex_labels is not None and extra:
            for row, e in enumerate(ex_labels):  # per request: exclude lists differ
                if len(e):
                    hit = np.isin(lab[row], e[e >= 0])
                    lab[row, hit] = -1
        if v > 1 or ex_labels is not None:
            s, lab = merge_multi_vector(s, lab, k)
        else:
            s, lab = s[:, :k], lab[:, :k]
        return s, lab, live

    def retrieve(self, requests: Sequence[dict] | pa.Table, k: int = 10,
                 exclude: list[list] | None = None) -> dict[str, Any]:
        """Top-k raw ids and scores per request.

        Returns ``{"results": [{"ids": [...], "scores": [...]}, ...], "index_version": "v000001"}``:
        one entry per request in order, ids best first (at most ``k``; fewer when the index or
        ``exclude`` leaves fewer), and the index version every result came from."""
        live = self._live  # every batch of this call uses the same index version
        n = requests.num_rows if isinstance(requests, pa.Table) else len(requests)
        if exclude is not None and len(exclude) != n:
            raise DataError(f"exclude has {len(exclude)} lists for {n} requests")
        results: list[dict] = []
        for start in range(0, n, self.batch_size):
            part = requests.slice(start, self.batch_size) if isinstance(requests, pa.Table) \
                else requests[start:start + self.batch_size]
            rows = part.num_rows if isinstance(part, pa.Table) else len(part)
            try:
                with self.tracing.span("encode", {"twotower.rows": rows}):
                    q = self.encode(part)
            except RequestFieldError as err:  # the row within this batch -> within the request
                raise RequestFieldError(err.field, err.row + start,
                                        str(err).replace(f"of query {err.row}:",
                                                         f"of query {err.row + start}:")) from None
            ex = exclude[start:start + self.batch_size] if exclude is not None else None
            with self.tracing.span("search", {"twotower.rows": rows, "twotower.k": k,
                                              "twotower.index_kind": live.index.manifest.get("kind"),
                                              "twotower.index_version": live.version}):
                s, lab, _ = self.search_vectors(q, k, ex, live)
            ids = live.index.raw_ids(np.where(lab < 0, 0, lab))
            ok = (lab >= 0).reshape(-1)
            w = lab.shape[1]
            for i in range(lab.shape[0]):
                sel = ok[i * w:(i + 1) * w]
                results.append({"ids": [x for x, o in zip(ids[i * w:(i + 1) * w], sel) if o],
                                "scores": [float(x) for x in s[i][sel]]})
        return {"results": results, "index_version": live.version}
