"""Index a trained run: build from its exported vectors, add new items with the item tower, remove.

These are what ``twotower index RUN_DIR`` / ``index add`` / ``index remove`` call. The contract of
the run (``contract.json``) decides normalisation, and its ``brw_weight`` (a column of the item
table, recorded by objectives that define a business weight, e.g. MOBIUS) is folded into the
vectors by default (``index.weights``); an explicit ``weight_column`` must agree with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from twotower.data.readers import TableSource
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.features.dataset import as_tensors
from twotower.index.ann import (VectorIndex, add_items, build_index, load_index, remove_items,
                                save_index)
from twotower.index import two_stage
from twotower.index.export import read_vectors
from twotower.index.weights import lookup_weights
from twotower.progress import chunk_starts
from twotower.run import RunDir
from twotower.runs import load_run, load_run_config, read_contract
from twotower.types import Side

__all__ = ["add_run_items", "build_run_index", "encode_items", "read_contract", "remove_run_items"]


def _weight_column(contract: dict, weight_column: str | None) -> str | None:
    brw = contract.get("brw_weight")
    if brw and weight_column and weight_column != brw:
        raise ConfigError(f"the model's contract weights items by {brw!r}, not {weight_column!r}")
    return weight_column or brw


def _tempered(contract: dict, weights: np.ndarray) -> np.ndarray:
    """w^alpha with the contract's ``brw_alpha`` (MOBIUS v2's tempered BRW; 1 = the paper's w)."""
    alpha = float(contract.get("brw_alpha", 1.0))
    return weights if alpha == 1.0 else np.power(weights, alpha, dtype=np.float32)


def build_run_index(run_dir: str | Path, kind: str = "auto", params: dict | None = None,
                    weight_column: str | None = None, backend: str = "faiss",
                    uri: str | None = None, brw: str = "fold", brw_n: int = 1000,
                    brw_floor: float | None = None) -> VectorIndex:
    """Index the run's exported item vectors and save it as a new CURRENT version, with the
    contract's business weight (or ``weight_column``) folded in.

    ``kind="auto"`` picks exact search for small corpora and IVF for large ones
    (``index.recall``); the recall@100 against exact search on the run's exported query vectors
    (or a sample of items) is measured and kept in the manifest.

    ``backend="milvus"``: the vectors go to a Milvus collection at ``uri`` (default: milvus-lite
    in ``RUN/index/milvus.db``; a server: ``http://host:19530``), see index/milvus.py.

    ``brw="two-stage"`` (MOBIUS v2, ``index.two_stage``; FAISS): keep the weights beside the
    vectors and rank the ANN's top ``brw_n`` by cos x w^alpha at search time, the candidates whose
    p(bad) / p(click) exceeds ``brw_floor`` last; recorded in the manifest (``two_stage``)."""
    if brw not in ("fold", "two-stage"):
        raise ConfigError(f"--brw {brw!r}: expected fold or two-stage")
    if brw == "two-stage" and backend != "faiss":
        raise ConfigError("--brw two-stage reranks FAISS candidates; use --backend faiss")
    if backend not in ("faiss", "milvus"):
        raise ConfigError(f"index backend {backend!r} is not one of faiss, milvus")
    if uri and backend != "milvus":
        raise ConfigError("--uri is for the milvus backend")
    run = RunDir(run_dir)
    contract = read_contract(run_dir)
    path = run.embeddings / "items.parquet"
    if not path.is_file():
        raise ArtifactError(f"{path}: no exported item vectors — run `twotower export {run_dir}`")
    ids, vecs = read_vectors(path)
    col = _weight_column(contract, weight_column)
    weights = None
    if col:
        cfg = load_run_config(run)
        # the item table: data.items, else the log (each item's first row), as MOBIUS checks
        src = TableSource(cfg.data.items if cfg.data.items is not None else cfg.data.train)
        id_col = contract["item_id"]
        weights = _tempered(contract, lookup_weights(
            src.read([c for c in (id_col, col) if c in src.columns]), id_col, col, ids, str(src.path)))
    contract = dict(contract, brw_weight=contract.get("brw_weight"))
    normalize = bool(contract.get("normalized"))
    if backend == "milvus":
        from twotower.index.ann import build_milvus_index
        from twotower.index.milvus import alias_for

        uri = uri or str(Path(run_dir).resolve() / "index" / "milvus.db")
        vi = build_milvus_index(vecs, ids, kind, params, weights, normalize, contract, col, uri,
                                alias_for(run_dir), recall_queries=_exported_queries(run))
    else:
        settings = None
        if brw == "two-stage":
            if weights is None:
                raise ConfigError("--brw two-stage needs a business weight: the run's contract has "
                                  "no brw_weight; pass --weight-column")
            from twotower.index.recall import default_kind

            settings = two_stage.two_stage_settings(
                contract, default_kind(len(vecs)) if kind == "auto" else kind, brw_n, brw_floor)
        vi = build_index(vecs, ids, kind, params, weights, normalize=normalize, contract=contract,
                         weight_column=col, recall_queries=_exported_queries(run),
                         two_stage_settings=settings)
    save_index(vi, run_dir)
    return vi


def _exported_queries(run: RunDir) -> np.ndarray | None:
    """The run's exported query vectors (``twotower export``), if any and readable."""
    path = run.embeddings / "queries.parquet"
    if not path.is_file():
        return None
    try:
        return read_vectors(path)[1]
    except (OSError, KeyError, ValueError, pa.ArrowException):  # stale or foreign: items sample instead
        return None


def encode_items(run_dir: str | Path, table: pa.Table, where: str = "items") -> np.ndarray:
    """Item-tower vectors [N, D] of raw item rows (unknown ids / values go to OOV)."""
    import torch

    trained = load_run(run_dir)
    features, model = trained.features, trained.model
    features.check_schema(table.schema, where, Side.ITEM)
    enc = features.encode(table, Side.ITEM, count=False)
    out = []
    with torch.no_grad():
        for s in chunk_starts(table.num_rows, 4096, "encoding new items", "item"):
            feats = as_tensors(enc, slice(s, s + 4096))
            out.append(model.retrieval_item(model.encode_item(feats)).float().numpy())
    return np.concatenate(out)


def add_run_items(run_dir: str | Path, items_path: str | Path) -> VectorIndex:
    """Encode the rows of ``items_path`` with the item tower, add them: a new index version."""
    contract = read_contract(run_dir)
    vi = load_index(run_dir, contract=contract)
    src = TableSource(items_path)
    table = src.read()
    id_col = contract["item_id"]
    if id_col not in table.column_names:
        raise DataError(f"{src.path}: missing item id column {id_col!r}")
    vecs = encode_items(run_dir, table, str(src.path))
    weights = None
    if vi.manifest.get("weight_column"):
        weights = _tempered(contract, lookup_weights(table, id_col, vi.manifest["weight_column"],
                                                     table[id_col].combine_chunks(), str(src.path)))
    new = add_items(vi, vecs, table[id_col].combine_chunks(), weights)
    save_index(new, run_dir)
    return new


def remove_run_items(run_dir: str | Path, ids: list) -> VectorIndex:
    """Remove items by raw id: a new index version."""
    vi = load_index(run_dir)
    if vi.ids.type in (pa.int64(), pa.int32()):
        try:
            ids = [int(i) for i in ids]
        except ValueError:
            raise DataError(f"item ids of this index are integers, got {ids[:5]}") from None
    new = remove_items(vi, ids)
    save_index(new, run_dir)
    return new
