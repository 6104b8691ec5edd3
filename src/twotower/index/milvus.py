"""Milvus behind the index interface: build / add / remove / search / versions / hot swap.

``twotower index RUN --backend milvus --uri runs/x/milvus.db`` (milvus-lite: an embedded, local
file; what the tests use) or ``--uri http://milvus:19530`` (a standalone or cluster server: the only
change). The vectors are the FAISS backend's exactly — ``fold_weights`` (normalisation and the MOBIUS
BRW ``normalize(x) * w``) then inner product — so a run's similarity contract holds on either engine.

A version is an immutable collection (``<alias>_<random>``, primary key = the label, as FAISS's
labels) plus ``RUN/index/vNNNNNN/`` with ``ids.parquet`` (label -> raw id) and a manifest naming the
collection; ``add`` / ``remove`` copy the live collection into a new one. Saving a version points
``RUN/index/CURRENT`` *and* the Milvus alias (``alter_alias``) at it, so other Milvus clients that
query the alias swap at the same moment as ``POST /admin/reload`` does in twotower.

Kinds: ``flat`` (FLAT), ``ivf-flat`` (IVF_FLAT), ``sq8`` (IVF_SQ8), ``hnsw`` (HNSW) everywhere;
``ivf-pq`` (IVF_PQ) on a Milvus server only — milvus-lite has no PQ; ``opq`` and ``fp16`` have no
Milvus index type. Those are refused with a message saying which kinds work.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import numpy as np

from twotower.errors import ArtifactError, ConfigError

MILVUS_INDEX_TYPES = {"flat": "FLAT", "ivf-flat": "IVF_FLAT", "sq8": "IVF_SQ8", "hnsw": "HNSW",
                      "ivf-pq": "IVF_PQ"}
LITE_KINDS = ("flat", "ivf-flat", "sq8", "hnsw")
INSERT_ROWS = 50_000  # rows per insert call (a gRPC message stays well under its 64 MB cap)


def is_lite(uri: str) -> bool:
    """milvus-lite (an embedded local ``.db`` file) rather than a server URI."""
    return not re.match(r"^(https?|tcp|grpc|unix)://", uri)


def check_kind(kind: str, uri: str) -> str:
    """The Milvus index type of ``kind`` on ``uri``, or a ConfigError naming what works."""
    lite = is_lite(uri)
    allowed = LITE_KINDS if lite else tuple(MILVUS_INDEX_TYPES)
    if kind not in allowed:
        where = "milvus-lite (a local .db file) has no PQ index" if lite and kind == "ivf-pq" \
            else f"Milvus has no index type for {kind!r}"
        raise ConfigError(f"index kind {kind!r} is not available on the milvus backend: {where}; "
                          f"kinds there: {', '.join(allowed)} (or use the faiss backend)")
    return MILVUS_INDEX_TYPES[kind]


_CLIENTS: dict[str, object] = {}


def client(uri: str):
    """One ``MilvusClient`` per URI per process (milvus-lite allows one opener of a file)."""
    if uri not in _CLIENTS:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise ConfigError("the milvus backend needs pymilvus (and milvus-lite for a local "
                              "file): pip install 'twotower[milvus]'") from None
        if is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        _CLIENTS[uri] = MilvusClient(uri)
    return _CLIENTS[uri]


def alias_for(run_dir: str | Path) -> str:
    """A Milvus alias unique to the run folder (several runs can share one server)."""
    root = Path(run_dir).resolve()
    stem = re.sub(r"[^A-Za-z0-9_]", "_", root.name)[:40] or "run"
    return f"tt_{stem}_{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def _index_params(kind: str, p: dict, dim: int) -> dict:
    if kind == "hnsw":
        return {"M": int(p["M"]), "efConstruction": int(p["ef_construction"])}
    if kind == "flat":
        return {}
    out = {"nlist": int(max(p.get("nlist") or 1, 1))}
    if kind == "ivf-pq":
        out.update(m=int(p["pq_m"]), nbits=int(p["pq_bits"]))
    return out


def _search_params(kind: str, p: dict, k: int) -> dict:
    if kind == "hnsw":
        return {"metric_type": "IP", "params": {"ef": int(max(p["ef_search"], k))}}
    if kind == "flat":
        return {"metric_type": "IP", "params": {}}
    return {"metric_type": "IP", "params": {"nprobe": int(p["nprobe"])}}


class MilvusStore:
    """One Milvus collection answering like a FAISS index: ``search``, ``ntotal``, ``d``."""

    def __init__(self, uri: str, collection: str, kind: str, params: dict, dim: int):
        self.uri, self.collection, self.kind, self.params, self.d = uri, collection, kind, params, dim
        self.client = client(uri)
        if not self.client.has_collection(collection):
            raise ArtifactError(f"Milvus at {uri}: collection {collection!r} is gone; rebuild the "
                                "index with `twotower index --backend milvus`")
        self.client.load_collection(collection)
        self.ntotal = int(self.client.query(collection, filter="", output_fields=["count(*)"])[0]
                          ["count(*)"])

    @classmethod
    def create(cls, uri: str, alias: str, kind: str, params: dict, dim: int) -> "MilvusStore":
        from pymilvus import DataType

        c = client(uri)
        name = f"{alias}_{uuid.uuid4().hex[:12]}"
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("label", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        ip = c.prepare_index_params()
        ip.add_index(field_name="vector", index_type=check_kind(kind, uri), metric_type="IP",
                     params=_index_params(kind, params, dim))
        c.create_collection(name, schema=schema, index_params=ip)
        store = cls.__new__(cls)
        store.uri, store.collection, store.kind, store.params, store.d = uri, name, kind, params, dim
        store.client, store.ntotal = c, 0
        return store

    def add_with_ids(self, x: np.ndarray, labels: np.ndarray) -> None:
        for s in range(0, len(x), INSERT_ROWS):
            rows = [{"label": int(lab), "vector": v} for lab, v in
                    zip(labels[s:s + INSERT_ROWS], x[s:s + INSERT_ROWS].tolist())]
            self.client.insert(self.collection, rows)
        self.client.flush(self.collection)
        self.ntotal += len(x)

    def remove(self, labels: np.ndarray) -> int:
        self.client.delete(self.collection, ids=[int(v) for v in labels])
        self.client.flush(self.collection)
        self.ntotal -= len(labels)
        return len(labels)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, stored vectors) of every row — what a new version is copied from."""
        it = self.client.query_iterator(self.collection, batch_size=16_384, filter="",
                                        output_fields=["label", "vector"])
        labels, vecs = [], []
        while batch := it.next():
            labels.extend(r["label"] for r in batch)
            vecs.extend(r["vector"] for r in batch)
        it.close()
        return np.asarray(labels, np.int64), np.asarray(vecs, np.float32).reshape(-1, self.d)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        hits = self.client.search(self.collection, data=np.asarray(q, np.float32).tolist(), limit=k,
                                  search_params=_search_params(self.kind, self.params, k),
                                  output_fields=[])
        scores = np.full((len(q), k), -np.inf, np.float32)
        labels = np.full((len(q), k), -1, np.int64)
        for row, hs in enumerate(hits):
            n = min(len(hs), k)
            labels[row, :n] = [h["label"] if "label" in h else h["id"] for h in hs[:n]]
            scores[row, :n] = [h["distance"] for h in hs[:n]]
        return scores, labels

    def point_alias(self, alias: str) -> None:
        """Make ``alias`` name this collection (created, or moved from the previous version)."""
        if alias in self.client.list_aliases(self.collection).get("aliases", []):
            return
        try:
            self.client.alter_alias(self.collection, alias)
        except Exception:  # noqa: BLE001 — pymilvus raises MilvusException when it does not exist
            self.client.create_alias(self.collection, alias)


def open_milvus_version(manifest: dict) -> MilvusStore:
    return MilvusStore(manifest["uri"], manifest["collection"], manifest["kind"],
                       manifest["params"], manifest["dim"])


def copy_store(store: MilvusStore, alias: str, drop: np.ndarray | None = None) -> MilvusStore:
    """A new collection holding ``store``'s rows (less the labels ``drop``): the next version."""
    labels, vecs = store.rows()
    if drop is not None and len(drop):
        keep = ~np.isin(labels, drop)
        labels, vecs = labels[keep], vecs[keep]
    new = MilvusStore.create(store.uri, alias, store.kind, store.params, store.d)
    if len(labels):
        new.add_with_ids(vecs, labels)
    new.client.load_collection(new.collection)
    return new
