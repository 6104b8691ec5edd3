"""Index a trained run: build from its exported vectors, add new items with the item tower, remove.

These are what ``twotower index RUN_DIR`` / ``index add`` / ``index remove`` call. The contract of
the run (``contract.json``) decides normalisation, and its ``brw_weight`` (a column of the item
table, set by models that define a business weight, e.g. MOBIUS) is folded into the vectors; an
explicit ``weight_column`` must agree with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.index.ann import (VectorIndex, add_items, build_index, load_index, remove_items,
                                save_index)
from twotower.index.export import read_vectors
from twotower.run import RunDir, read_json_artifact


def read_contract(run_dir: str | Path) -> dict:
    return read_json_artifact(RunDir(run_dir).contract, "similarity contract",
                              "train or export the run first")


def _weights_for(ids: pa.Array, table: pa.Table, id_col: str, column: str, where: str) -> np.ndarray:
    if column not in table.column_names:
        raise DataError(f"{where}: no weight column {column!r}; it has {', '.join(table.column_names)}")
    if id_col not in table.column_names:
        raise DataError(f"{where}: no item id column {id_col!r}")
    keys = table[id_col].combine_chunks()
    if keys.type != ids.type:
        keys, ids = keys.cast(pa.string()), ids.cast(pa.string())
    pos = pc.index_in(ids, value_set=keys)
    if pos.null_count:
        missing = ids.filter(pc.is_null(pos)).slice(0, 5).to_pylist()
        raise DataError(f"{where}: no {column!r} weight for items {missing}")
    w = table[column].combine_chunks().take(pos).cast(pa.float64())
    if w.null_count:
        raise DataError(f"{where}: column {column!r} has missing weights")
    return w.to_numpy(zero_copy_only=False).astype(np.float32)


def _weight_column(contract: dict, weight_column: str | None) -> str | None:
    brw = contract.get("brw_weight")
    if brw and weight_column and weight_column != brw:
        raise ConfigError(f"the model's contract weights items by {brw!r}, not {weight_column!r}")
    return weight_column or brw


def build_run_index(run_dir: str | Path, kind: str = "hnsw", params: dict | None = None,
                    weight_column: str | None = None) -> VectorIndex:
    """Index the run's exported item vectors and save it as a new CURRENT version."""
    from twotower.data.readers import TableSource
    from twotower.pipeline import load_run_config

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
        if cfg.data.items is None:
            raise ConfigError(f"weight column {col!r} needs data.items (the item table)")
        src = TableSource(cfg.data.items)
        weights = _weights_for(ids, src.read([contract["item_id"], col]), contract["item_id"], col,
                               str(src.path))
    contract = dict(contract, brw_weight=contract.get("brw_weight"))
    vi = build_index(vecs, ids, kind, params, weights, normalize=bool(contract.get("normalized")),
                     contract=contract, weight_column=col)
    save_index(vi, run_dir)
    return vi


def encode_items(run_dir: str | Path, table: pa.Table, where: str = "items") -> np.ndarray:
    """Item-tower vectors [N, D] of raw item rows (unknown ids / values go to OOV)."""
    import torch

    from twotower.features.feature_set import FeatureSet
    from twotower.pipeline import load_model
    from twotower.progress import chunk_starts
    from twotower.types import Side

    run = RunDir(run_dir)
    features = FeatureSet.load(run.features)
    features.check_schema(table.schema, where, Side.ITEM)
    model = load_model(run)
    enc = features.encode(table, Side.ITEM, count=False)
    out = []
    with torch.no_grad():
        for s in chunk_starts(table.num_rows, 4096, "encoding new items", "item"):
            feats = {k: torch.from_numpy(np.ascontiguousarray(v[s:s + 4096])) for k, v in enc.items()}
            out.append(model.retrieval_item(model.encode_item(feats)).float().numpy())
    return np.concatenate(out)


def add_run_items(run_dir: str | Path, items_path: str | Path) -> VectorIndex:
    """Encode the rows of ``items_path`` with the item tower, add them: a new index version."""
    from twotower.data.readers import TableSource

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
        weights = _weights_for(table[id_col].combine_chunks(), table, id_col,
                               vi.manifest["weight_column"], str(src.path))
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
