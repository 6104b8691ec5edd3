"""Business weights folded into the index: the one place BRW is applied.

MOBIUS serving (Fan et al., KDD 2019) ranks by the business related weight times the relevance:
cos(x, y) * w = (x / |x|)^T (y * w / |y|), so maximum inner product search over the weighted item
vectors ranks exactly by the re-weighted cosine. A run names its weight column in its contract
(``brw_weight``); ``twotower index`` looks the weights up in the item table and folds them here.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from twotower.errors import DataError


def fold_weights(vectors: np.ndarray, weights: np.ndarray | None, normalize: bool) -> np.ndarray:
    """``normalize(x) * w`` (MOBIUS BRW folded into the vectors): MIPS then ranks by cos·w."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float32).reshape(-1)
        if w.shape[0] != x.shape[0]:
            raise DataError(f"{w.shape[0]} weights for {x.shape[0]} item vectors")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise DataError("business weights must be finite and non-negative")
        x = x * w[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def check_business_weights(weights: np.ndarray, ids: pa.Array, column: str | None,
                           allow_all_zero: bool = False, where: str = "") -> None:
    """BRW weights must be finite and >= 0, and not all 0 (every score would be 0): the error
    names the column and the first offending item id (``where``: the file, as a prefix)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    name = (f"{where}: " if where else "") + (f"business weight column {column!r}" if column
                                              else "business weights")
    if w.shape[0] != len(ids):
        raise DataError(f"{name}: {w.shape[0]} weights for {len(ids)} items")
    for bad, what in ((~np.isfinite(w), "not finite"), (w < 0, "negative")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: item {ids[first].as_py()!r} has weight {w[first]} "
                            f"({int(bad.sum())} of {len(w)} weights are {what}); weights must be "
                            "finite and >= 0")
    if not allow_all_zero and len(w) and not w.any():
        raise DataError(f"{name}: every one of the {len(w)} weights is 0, so every item would "
                        "score 0; check the column (weights scale cos(q, x), MOBIUS BRW)")


def lookup_weights(table: pa.Table, id_column: str, weight_column: str, ids: pa.Array,
                   source: str) -> np.ndarray:
    """float32[N] weight of each id of ``ids`` read from ``table`` (the first row of an id wins);
    a DataError names the file and column when one is missing, not a number, or has no value for
    some item."""
    for col, what in ((id_column, "item id"), (weight_column, "business weight")):
        if col not in table.column_names:
            raise DataError(f"{source}: missing {what} column {col!r}; the file has: "
                            f"{', '.join(table.column_names)}")
    t = table[weight_column].type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"{source}: weight column {weight_column!r} has type {t}, expected a number")
    keys = table[id_column].combine_chunks()
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if keys.type != ids.type:
        keys, ids = keys.cast(pa.string()), ids.cast(pa.string())
    pos = pc.index_in(ids, value_set=keys)
    if pos.null_count:
        missing = ids.filter(pc.is_null(pos)).slice(0, 5).to_pylist()
        raise DataError(f"{source}: no {weight_column!r} weight for items {missing}")
    w = table[weight_column].combine_chunks().take(pos).cast(pa.float64())
    if w.null_count:
        first = ids.filter(w.is_null()).slice(0, 1).to_pylist()
        raise DataError(f"{source}: column {weight_column!r} has {w.null_count} missing weights "
                        f"(item {first[0]!r} first)")
    w = np.asarray(w.to_numpy(zero_copy_only=False))
    check_business_weights(w, ids, weight_column, where=str(source))
    return w.astype(np.float32)


def brw_rerank(query: torch.Tensor, items: torch.Tensor, weight: torch.Tensor, k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for the folded index: exact cos(q, a) * w scoring and top-k."""
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    a = torch.nn.functional.normalize(items.float(), dim=-1)
    return ((q @ a.T) * weight.float()[None, :]).topk(min(k, items.shape[0]), dim=1)
