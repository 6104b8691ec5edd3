"""Compressed FAISS indexes over a run's item vectors, with ids, manifest, checksum and versions.

Kinds (all inner-product / MIPS): ``flat`` (exact), ``hnsw``, ``ivf-flat``, ``ivf-pq``, ``opq``
(optimised product quantisation + IVF, the vector compression MOBIUS deployed), ``sq8`` and
``fp16`` (scalar quantisation, IVF-partitioned unless ``nlist=0``).

Business-related weight (BRW), MOBIUS (Fan et al., KDD 2019, §4.2): the ranking function
``cos(q, x) * w(x)`` is folded into the stored vectors as ``normalize(x) * w`` so that plain MIPS
on the index returns the BRW ranking, with no re-ranking stage.

On disk, one index *version* is a folder ``RUN/index/v000001/`` holding ``index.faiss``,
``ids.parquet`` (label -> raw item id) and ``manifest.json`` (format version, dim, metric, kind,
parameters, count, model checksum, contract fingerprint, weight column, creation time and the
sha256 of both files). ``RUN/index/CURRENT`` names the live version. Every file is written under a
temporary name and renamed, so a half-written index never exists; loading re-checks everything.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.index.manifest import (KINDS, check_faiss_structure, check_version_name,
                                     validate_build_params, validate_manifest)
from twotower.index import two_stage
from twotower.index.weights import check_business_weights, fold_weights
from twotower.progress import chunk_starts
from twotower.run import (RunDir, atomic_write_dir, atomic_write_text, read_json_artifact,
                          sha256_file)

INDEX_FORMAT_VERSION = 1

#: Defaults chosen from bench/index.py (figures: README "Index and serving", bench/results/index.json).
#: ``nlist=None`` = 4·√N; ``pq_m=None`` = D/2 sub-quantisers (2 dims each): higher recall than 16
#: at 49 instead of 33 bytes per vector.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 40, "ef_search": 64},
    "ivf-flat": {"nlist": None, "nprobe": 32},
    "ivf-pq": {"nlist": None, "nprobe": 32, "pq_m": None, "pq_bits": 8},
    "opq": {"nlist": None, "nprobe": 32, "pq_m": None, "pq_bits": 8},
    "sq8": {"nlist": None, "nprobe": 32},
    "fp16": {"nlist": None, "nprobe": 32},
}
#: Contract fields the index depends on: a run whose contract differs in any is refused.
CONTRACT_KEYS = ("metric", "normalized", "query_vectors", "item_vector", "dim", "merge",
                 "weights_sha256", "brw_weight")
EXACT_SCAN_MIN_QUERIES = 8  # flat: from here twotower's scan beats FAISS's (bench/index.py, README)
TRAIN_SAMPLE = 131_072  # vectors used to train coarse / product quantisers (at least 39 per list)


def _faiss():
    import faiss

    return faiss


def contract_fingerprint(contract: dict) -> dict:
    return {k: contract.get(k) for k in CONTRACT_KEYS}


def resolve_params(kind: str, n: int, dim: int, params: dict | None = None) -> dict:
    """Defaults of ``kind`` updated by ``params``; ``nlist`` / PQ sizes fitted to N and D."""
    if kind not in KINDS:
        raise ConfigError(f"index kind {kind!r} is not one of {', '.join(KINDS)}")
    p = dict(DEFAULT_PARAMS[kind])
    unknown = set(params or {}) - set(p)
    if unknown:
        raise ConfigError(f"index parameter{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(sorted(unknown))} not valid for kind {kind!r}; "
                          f"valid: {', '.join(p) or 'none'}")
    p.update(params or {})
    validate_build_params(kind, p)  # types and ranges, before any arithmetic on them
    if "nlist" in p:
        if p["nlist"] is None:
            p["nlist"] = int(4 * math.sqrt(max(n, 1)))
        if p["nlist"]:  # at least 39 training points per list, as FAISS wants
            p["nlist"] = int(max(1, min(p["nlist"], n // 39)))
        p["nprobe"] = int(min(p["nprobe"], max(p["nlist"], 1)))
    if "pq_m" in p:
        m = max(1, int(p["pq_m"] or dim // 2))
        while dim % m:
            m -= 1
        p["pq_m"] = m
        p["pq_bits"] = int(max(1, min(p["pq_bits"], int(math.log2(max(n, 2))) - 1)))
    return p


def _factory_string(kind: str, p: dict, dim: int) -> str:
    ivf = f"IVF{p['nlist']}," if p.get("nlist") else ""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{p['M']}"
    if kind == "ivf-flat":
        return f"{ivf}Flat" if ivf else "Flat"
    if kind == "ivf-pq":
        return f"{ivf}PQ{p['pq_m']}x{p['pq_bits']}"
    if kind == "opq":
        return f"OPQ{p['pq_m']},{ivf}PQ{p['pq_m']}x{p['pq_bits']}"
    if kind == "sq8":
        return f"{ivf}SQ8"
    return f"{ivf}SQfp16"


def apply_search_params(index, kind: str, p: dict) -> None:
    faiss = _faiss()
    ps = faiss.ParameterSpace()
    if kind == "hnsw":
        ps.set_index_parameter(index, "efSearch", int(p["ef_search"]))
    elif p.get("nlist"):
        ps.set_index_parameter(index, "nprobe", int(p["nprobe"]))


def _new_faiss_index(kind: str, p: dict, dim: int, train: np.ndarray):
    faiss = _faiss()
    inner = faiss.index_factory(dim, _factory_string(kind, p, dim), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(inner).hnsw.efConstruction = int(p["ef_construction"])
    if kind == "opq" and len(train) < 256:
        raise DataError(f"index kind 'opq' needs at least 256 items to train its rotation, got "
                        f"{len(train)}; use 'ivf-pq' or 'flat'")
    if not inner.is_trained:
        rng = np.random.default_rng(0)
        size = max(TRAIN_SAMPLE, 39 * int(p.get("nlist") or 0))  # FAISS wants 39 points per list
        sample = train if len(train) <= size else train[rng.choice(len(train), size, replace=False)]
        inner.train(np.ascontiguousarray(sample))
    apply_search_params(inner, kind, p)
    return faiss.IndexIDMap2(inner)


@dataclass
class VectorIndex:
    """A FAISS index whose int64 labels map to raw item ids (``ids[label]``; removed = null)."""

    index: Any
    ids: pa.Array
    manifest: dict
    version: str | None = None
    path: Path | None = None
    _id_lookup: dict | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_milvus(self) -> bool:
        """Vectors held by a Milvus collection (index/milvus.py) rather than a FAISS index."""
        return self.manifest.get("backend") == "milvus"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, K], labels [Q, K]); label -1 = no result (fewer than K items). An index
        built with two-stage BRW (manifest ``two_stage``) reranks the ANN's top N
        (``index.two_stage``); otherwise this is ``ann_search``."""
        st = self.manifest.get("two_stage")
        if not st:
            return self.ann_search(queries, k)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.count))
        _, labels = self.ann_search(q, max(k, st["n"]))
        if labels.size and (labels >= 0).any():
            safe = np.where(labels < 0, labels.max(), labels)
            cand = self.index.reconstruct_batch(safe.reshape(-1)).reshape(*labels.shape, -1)
        else:
            cand = np.zeros((*labels.shape, self.manifest["dim"]), np.float32)
        return two_stage.rerank(q, labels, cand, k, st)

    def ann_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, K], labels [Q, K]) of the ANN by inner product over the stored vectors
        (queries of a two-stage index get 0 at its weight coordinate).

        ``flat`` answers batches with twotower's pruned exact scan over FAISS's own storage (same
        result as ``IndexFlatIP``, several times its queries/s on large batches; bench/index.py
        measures both); a few queries are bound by reading the corpus, where FAISS's SIMD scan is
        faster."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.manifest.get("two_stage") and q.shape[1] == self.manifest["dim"] - 1:
            q = two_stage.pad_queries(q)
        k = max(1, min(int(k), self.count))
        if self.kind == "flat" and not self.is_milvus and self.count and \
                len(q) >= EXACT_SCAN_MIN_QUERIES:
            return self._exact_search(q, k)
        return self.index.search(q, k)

    def _exact_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from twotower.index.exact import exact_search

        faiss = _faiss()
        inner = faiss.downcast_index(self.index.index)
        n, d = int(inner.ntotal), int(inner.d)
        stored = faiss.rev_swig_ptr(inner.get_xb(), n * d)  # a view, no copy
        items = torch.from_numpy(np.asarray(stored, dtype=np.float32).reshape(n, d))
        scores, pos = exact_search(torch.from_numpy(q), items, k)
        labels = faiss.rev_swig_ptr(self.index.id_map.data(), n)  # label of each stored row
        return scores.numpy(), np.asarray(labels, dtype=np.int64)[pos.numpy()]

    def raw_ids(self, labels: np.ndarray) -> list:
        return self.ids.take(pa.array(np.asarray(labels, dtype=np.int64).reshape(-1))).to_pylist()

    def labels_of(self, raw_ids: list) -> np.ndarray:
        """Labels of raw ids (-1 when unknown) — used by ``exclude``."""
        if self._id_lookup is None:
            vals = self.ids.to_pylist()
            self._id_lookup = {v: i for i, v in enumerate(vals) if v is not None}
            self._id_lookup.update({str(v): i for i, v in enumerate(vals) if v is not None})
        return np.array([self._id_lookup.get(r, self._id_lookup.get(str(r), -1)) for r in raw_ids],
                        dtype=np.int64)

    def reconstruct_alive(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, stored vectors) of the items still in the index (lossy for quantised kinds)."""
        if self.is_milvus:
            return self.index.rows()
        faiss = _faiss()
        labels = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        inner = self.index.index
        try:
            vecs = inner.reconstruct_n(0, inner.ntotal)
        except RuntimeError:
            if hasattr(faiss, "extract_index_ivf"):
                faiss.extract_index_ivf(inner).make_direct_map()
            vecs = inner.reconstruct_n(0, inner.ntotal)
        return labels, vecs

    def nbytes(self) -> int:
        if self.is_milvus:
            raise ArtifactError("a Milvus collection's size is the server's to report")
        return int(_faiss().serialize_index(self.index).nbytes)


ADD_CHUNK = 1 << 16


def add_in_chunks(index, x: np.ndarray, labels: np.ndarray, desc: str) -> None:
    """``index.add_with_ids`` in chunks of ``ADD_CHUNK`` rows (a progress bar on large adds); a
    small add stays one call, so small indexes are built exactly as before."""
    if len(x) <= ADD_CHUNK:
        index.add_with_ids(x, labels)
        return
    for start in chunk_starts(len(x), ADD_CHUNK, desc, "item"):
        index.add_with_ids(x[start:start + ADD_CHUNK], labels[start:start + ADD_CHUNK])


def build_index(vectors: np.ndarray, ids: pa.Array | np.ndarray | list, kind: str = "flat",
                params: dict | None = None, weights: np.ndarray | None = None,
                normalize: bool = False, contract: dict | None = None,
                weight_column: str | None = None, check_recall: bool = True,
                recall_queries: np.ndarray | None = None,
                two_stage_settings: dict | None = None) -> VectorIndex:
    """Index ``vectors`` [N, D] under raw ``ids`` (any type), BRW ``weights`` [N] folded in.

    ``normalize``: L2-normalise the vectors first (cosine contracts); with ``weights`` the
    index then ranks by ``cos(q, x) * w`` under plain inner product. ``kind="auto"``: exact up
    to ``recall.EXACT_MAX_ITEMS`` items, IVF above. ``check_recall``: measure recall@100 against
    exact search on ``recall_queries`` (default: a sample of the items) into ``manifest["recall"]``.
    ``two_stage_settings`` (``index.two_stage``): store the weights beside the vectors and rerank
    the ANN's top N at search time instead of folding them in (the recall is the ANN's).
    """
    from twotower.index.recall import recall_report

    vectors, ids, kind, chosen, p = prepare_build(vectors, ids, kind, params, weights, weight_column)
    n, dim = vectors.shape
    if two_stage_settings is not None:
        if weights is None:
            raise ConfigError("two-stage BRW needs business weights (the contract's brw_weight "
                              "or --weight-column)")
        x = two_stage.stored_vectors(vectors, weights, normalize)
        dim = x.shape[1]
        p = resolve_params(kind, n, dim, params)
    else:
        x = fold_weights(vectors, weights, normalize)
    t0 = time.perf_counter()
    index = _new_faiss_index(kind, p, dim, x)
    add_in_chunks(index, x, np.arange(n, dtype=np.int64), f"index build ({kind})")
    manifest = build_manifest(kind, p, dim, normalize, weight_column, n, contract,
                              time.perf_counter() - t0, chosen)
    if two_stage_settings is not None:
        manifest["two_stage"] = two_stage_settings
        if recall_queries is not None and recall_queries.shape[1] == dim - 1:
            recall_queries = two_stage.pad_queries(np.asarray(recall_queries, np.float32))
    vi = VectorIndex(index, ids, manifest)
    if check_recall:
        manifest["recall"] = recall_report(vi.ann_search, x, recall_queries)
    return vi


def build_milvus_index(vectors: np.ndarray, ids, kind: str, params: dict | None, weights,
                       normalize: bool, contract: dict | None, weight_column: str | None, uri: str,
                       alias: str, check_recall: bool = True,
                       recall_queries: np.ndarray | None = None) -> VectorIndex:
    """``build_index``'s twin on Milvus (index/milvus.py, ``uri``: a milvus-lite file or a server):
    same checks, the same folded vectors, a new collection under ``alias``'s prefix, the same
    recall@100 against exact search in the manifest."""
    from twotower.index.milvus import MilvusStore, check_kind
    from twotower.index.recall import recall_report

    if kind != "auto":
        check_kind(kind, uri)  # refused before any work
    vectors, ids, kind, chosen, p = prepare_build(vectors, ids, kind, params, weights, weight_column)
    engine_kind = check_kind(kind, uri)
    x = fold_weights(vectors, weights, normalize)
    t0 = time.perf_counter()
    store = MilvusStore.create(uri, alias, kind, p, x.shape[1])
    store.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    store.client.load_collection(store.collection)
    manifest = build_manifest(kind, p, x.shape[1], normalize, weight_column, len(x), contract,
                              time.perf_counter() - t0, chosen)
    manifest.update(backend="milvus", uri=uri, collection=store.collection, alias=alias,
                    factory=f"milvus:{engine_kind}")
    vi = VectorIndex(store, ids, manifest)
    if check_recall:
        manifest["recall"] = recall_report(vi.search, x, recall_queries)
    return vi


def prepare_build(vectors, ids, kind: str, params: dict | None, weights: np.ndarray | None,
                  weight_column: str | None) -> tuple[np.ndarray, pa.Array, str, str, dict]:
    """Checked ``vectors`` [N, D], ids as one Arrow array, the kind (``auto`` resolved), why it
    was chosen, and its resolved parameters; business ``weights`` checked."""
    from twotower.index.recall import default_kind, kind_reason

    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise DataError(f"item vectors must be a non-empty [N, D] matrix, got shape {vectors.shape}")
    ids = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if len(ids) != len(vectors):
        raise DataError(f"{len(ids)} ids for {len(vectors)} item vectors")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise DataError("item ids are not unique")
    n, dim = vectors.shape
    chosen = kind_reason(n) if kind == "auto" else "given"
    kind = default_kind(n) if kind == "auto" else kind
    p = resolve_params(kind, n, dim, params)
    if weights is not None:
        check_business_weights(weights, ids, weight_column)
    return vectors, ids, kind, chosen, p


def build_manifest(kind: str, p: dict, dim: int, normalize: bool, weight_column: str | None,
                   n: int, contract: dict | None, seconds: float, chosen: str) -> dict:
    """A new index's manifest (either engine; ``save_index`` adds version, count and checksums)."""
    contract = contract or {}
    return {
        "format_version": INDEX_FORMAT_VERSION,
        "kind": kind,
        "params": p,
        "factory": _factory_string(kind, p, dim),
        "dim": dim,
        "metric": "inner_product",
        "normalized": bool(normalize),
        "weight_column": weight_column,
        "count": n,
        "next_label": n,
        "model_sha256": contract.get("weights_sha256"),
        "contract": contract_fingerprint(contract),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": seconds,
        "parent": None,
        "kind_chosen": chosen,
    }


# ---------------------------------------------------------------- versions on disk
def index_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "index"


def save_index(vi: VectorIndex, run_dir: str | Path) -> str:
    """Write ``vi`` as the next version of the run's index and make it CURRENT; returns its name."""
    faiss = _faiss()
    root = index_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(m.group(1)) for d in root.iterdir() if (m := re.fullmatch(r"v(\d{6})", d.name))]
    version = f"v{(max(existing) + 1 if existing else 1):06d}"
    manifest = dict(vi.manifest, count=vi.count, version=version)

    def write(tmp: Path) -> None:
        if not vi.is_milvus:  # a Milvus version's vectors live in its collection
            faiss.write_index(vi.index, str(tmp / "index.faiss"))
        pq.write_table(pa.table({"id": vi.ids}), tmp / "ids.parquet")
        manifest["files"] = {f: sha256_file(tmp / f) for f in engine_files(manifest)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")

    atomic_write_dir(root / version, write)
    atomic_write_text(root / "CURRENT", version + "\n")
    if vi.is_milvus:  # Milvus clients of the alias swap with CURRENT
        vi.index.point_alias(manifest["alias"])
    vi.manifest, vi.version, vi.path = manifest, version, root / version
    return version


def current_version(run_dir: str | Path) -> str:
    cur = index_root(run_dir) / "CURRENT"
    if not cur.is_file():
        raise ArtifactError(f"{Path(run_dir)}: no index built (run `twotower index {run_dir}`)")
    try:
        name = cur.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{cur}: unreadable ({err})") from None
    return check_version_name(name, str(cur))


def _read_faiss(path: Path, manifest: dict, mmap: bool):
    """Read an index file, mapped read-only when asked: IVF kinds map their inverted lists
    (``IO_FLAG_MMAP``), flat and HNSW their flat code storage (``IO_FLAG_MMAP_IFC``)."""
    faiss = _faiss()
    if mmap:
        ivf = bool(manifest.get("params", {}).get("nlist"))
        flag = faiss.IO_FLAG_MMAP if ivf else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
        if flag:
            try:
                return faiss.read_index(str(path), flag)
            except RuntimeError:  # a kind / FAISS build that cannot map: read a private copy
                pass
    return faiss.read_index(str(path))


def engine_files(manifest: dict) -> tuple[str, ...]:
    """The files a version folder holds (a Milvus version: its ids only)."""
    return ("ids.parquet",) if manifest.get("backend") == "milvus" else ("index.faiss", "ids.parquet")


def load_index(run_dir: str | Path, version: str | None = None,
               contract: dict | None = None, mmap: bool = False) -> VectorIndex:
    """Load (and verify) a version of the run's index; the CURRENT one by default.

    ``mmap``: map the index file read-only instead of copying it (FAISS ``IO_FLAG_MMAP``), so
    several serving processes share one copy in the page cache; such an index must not be
    modified in place (``add_items`` / ``remove_items`` work on a copy anyway).

    Raises ArtifactError when a file is missing, a checksum or the format version differs, or
    the run's contract (``contract``, default: the run's contract.json) does not match.
    """
    faiss = _faiss()
    version = check_version_name(version, "index version") if version else current_version(run_dir)
    folder = index_root(run_dir) / version
    mpath = folder / "manifest.json"
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: index version {version} not found")
    manifest = read_json_artifact(mpath, "manifest", format_version=INDEX_FORMAT_VERSION)
    manifest = validate_manifest(manifest, mpath, version)
    for name, digest in (manifest.get("files") or {}).items():
        f = folder / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing index file")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{f}: checksum mismatch — the index file is corrupt or was "
                                "modified; rebuild it with `twotower index`")
    if set(manifest.get("files") or {}) != set(engine_files(manifest)):
        raise ArtifactError(f"{mpath}: manifest lists no checksums for "
                            f"{' / '.join(engine_files(manifest))}")
    if contract is None:
        contract = read_json_artifact(RunDir(run_dir).contract, "similarity contract")
    want = contract_fingerprint(contract)
    diff = {k: (manifest["contract"].get(k), want[k]) for k in CONTRACT_KEYS
            if manifest["contract"].get(k) != want[k]}
    if diff:
        raise ArtifactError(f"{folder}: index was built for a different model contract "
                            f"({'; '.join(f'{k}: index {a!r} vs run {b!r}' for k, (a, b) in diff.items())})"
                            "; rebuild it with `twotower index`")
    try:
        if manifest.get("backend") == "milvus":
            from twotower.index.milvus import open_milvus_version

            index = open_milvus_version(manifest)
        else:
            index = _read_faiss(folder / "index.faiss", manifest, mmap)
        ids = pq.read_table(folder / "ids.parquet").column("id").combine_chunks()
    except ArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 — FAISS raises RuntimeError on a bad file
        raise ArtifactError(f"{folder}: cannot read index ({err})") from None
    if index.d != manifest["dim"] or index.ntotal != manifest["count"]:
        raise ArtifactError(f"{folder}: index holds {index.ntotal} x {index.d} vectors, manifest "
                            f"says {manifest['count']} x {manifest['dim']}")
    if manifest.get("backend") != "milvus":
        check_faiss_structure(index, manifest, mpath)
        apply_search_params(index, manifest["kind"], manifest["params"])
    _check_labels(index, ids, manifest, folder)
    return VectorIndex(index, ids, manifest, version, folder)


def _check_labels(index, ids: pa.Array, manifest: dict, folder: Path) -> None:
    """Every stored label must have a row in ids.parquet (one per label ever given)."""
    if len(ids) != manifest["next_label"]:
        raise ArtifactError(f"{folder}: ids.parquet holds {len(ids)} ids, the manifest's next_label "
                            f"is {manifest['next_label']}; rebuild the index with `twotower index`")
    if manifest.get("backend") == "milvus":  # labels are the collection's primary keys
        return
    labels = _faiss().vector_to_array(index.id_map) if hasattr(index, "id_map") else None
    if labels is None or (len(labels) and (labels.min() < 0 or labels.max() >= len(ids))):
        raise ArtifactError(f"{folder}: index.faiss labels do not match ids.parquet; rebuild the "
                            "index with `twotower index`")


# ---------------------------------------------------------------- new versions: add / remove
def add_items(vi: VectorIndex, vectors: np.ndarray, ids: pa.Array | list,
              weights: np.ndarray | None = None) -> VectorIndex:
    """A new index with ``vectors`` added under raw ``ids`` (an id already present is replaced)."""
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids)
    if len(ids) != len(vectors):
        raise DataError(f"{len(ids)} ids for {len(vectors)} item vectors")
    existing = vi.labels_of(ids.to_pylist())
    if weights is not None:  # new items may all weigh 0 (never shown); the index as a whole may not
        check_business_weights(weights, ids, vi.manifest.get("weight_column"), allow_all_zero=True)
    base = remove_items(vi, ids.filter(pa.array(existing >= 0))) if (existing >= 0).any() else \
        _copy(vi)
    if base.manifest.get("two_stage"):
        if weights is None:
            raise DataError("a two-stage BRW index needs the business weight of new items")
        x = two_stage.stored_vectors(vectors, weights, base.manifest["normalized"])
    else:
        x = fold_weights(vectors, weights, base.manifest["normalized"])
    if x.shape[1] != base.manifest["dim"]:
        raise DataError(f"new item vectors have dim {x.shape[1]}, the index {base.manifest['dim']}")
    start = base.manifest["next_label"]
    labels = np.arange(start, start + len(x), dtype=np.int64)
    add_in_chunks(base.index, x, labels, "index add")
    try:
        base.ids = pa.concat_arrays([base.ids, ids.cast(base.ids.type)])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"new ids of type {ids.type} do not match the index's {base.ids.type}") from None
    base.manifest.update(next_label=start + len(x), count=base.count, parent=vi.version,
                         created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    base._id_lookup = None
    _measure_again(base)
    return base


def remove_items(vi: VectorIndex, ids: pa.Array | list) -> VectorIndex:
    """A new index without the items ``ids`` (unknown ids are an error)."""
    faiss = _faiss()
    raw = ids.to_pylist() if isinstance(ids, pa.Array) else list(ids)
    labels = vi.labels_of(raw)
    if (labels < 0).any():
        missing = [r for r, lab in zip(raw, labels) if lab < 0][:5]
        raise DataError(f"ids not in the index: {missing}")
    new = _copy(vi, drop=labels)
    try:
        removed = len(labels) if vi.is_milvus else new.index.remove_ids(faiss.IDSelectorBatch(labels))
    except RuntimeError:  # HNSW cannot remove: rebuild from the stored vectors
        alive, vecs = vi.reconstruct_alive()
        keep = ~np.isin(alive, labels)
        p = vi.manifest["params"]
        new.index = _new_faiss_index(vi.kind, p, vi.manifest["dim"], vecs[keep])
        new.index.add_with_ids(np.ascontiguousarray(vecs[keep]), alive[keep])
        removed = int((~keep).sum())
    assert removed == len(labels)
    mask = np.ones(len(new.ids), dtype=bool)
    mask[labels] = False
    new.ids = pc.if_else(pa.array(mask), new.ids, pa.nulls(len(new.ids), new.ids.type))
    new.manifest.update(count=new.count, parent=vi.version,
                        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    new._id_lookup = None
    _measure_again(new)
    return new


def _measure_again(vi: VectorIndex) -> None:
    """A version made from another one re-measures its recall (the parent's no longer holds)."""
    if "recall" in vi.manifest:
        from twotower.index.recall import stored_recall

        vi.manifest["recall"] = stored_recall(vi)


def _copy(vi: VectorIndex, drop: np.ndarray | None = None) -> VectorIndex:
    """A modifiable copy of ``vi`` (Milvus: a new collection without the labels ``drop``)."""
    if vi.is_milvus:  # versions stay immutable
        from twotower.index.milvus import copy_store

        new = VectorIndex(copy_store(vi.index, vi.manifest["alias"], drop), vi.ids,
                          json.loads(json.dumps(vi.manifest)), vi.version, vi.path)
        new.manifest["collection"] = new.index.collection
        return new
    faiss = _faiss()
    index = faiss.deserialize_index(faiss.serialize_index(vi.index))
    apply_search_params(index, vi.kind, vi.manifest["params"])
    return VectorIndex(index, vi.ids, json.loads(json.dumps(vi.manifest)), vi.version, vi.path)
