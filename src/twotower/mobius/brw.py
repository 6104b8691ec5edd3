"""Business related weight (BRW) of MOBIUS serving (Fan et al., KDD 2019):
cos(x, y) * w = (x / |x|)^T (y * w / |y|), so maximum inner product search over the weighted item
vectors ranks exactly by the re-weighted cosine."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from twotower.errors import DataError
from twotower.towers.mlp import l2_normalize


def brw_item_vectors(click_vectors: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N, D] normalize(click) * w[N] — what the index stores for BRW serving."""
    return l2_normalize(click_vectors.float()) * weight.float()[:, None]


def brw_rerank(query: torch.Tensor, items: torch.Tensor, weight: torch.Tensor, k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: exact cos(q, a) * w scoring and top-k (the ANN + re-weighting path)."""
    cos = l2_normalize(query.float()) @ l2_normalize(items.float()).T  # [B, N]
    return (cos * weight.float()[None, :]).topk(min(k, items.shape[0]), dim=1)


def lookup_weights(table: pa.Table, id_column: str, weight_column: str, ids: pa.Array,
                   source: str) -> np.ndarray:
    """float64[N] weight of each id of ``ids`` read from ``table`` (first row of an id wins)."""
    for col, what in ((id_column, "item id"), (weight_column, "BRW weight")):
        if col not in table.column_names:
            raise DataError(f"{source}: missing {what} column {col!r} (objective.mobius.brw_column); "
                            f"the file has: {', '.join(table.column_names)}")
    t = table[weight_column].type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"{source}: BRW column {weight_column!r} has type {t}, expected a number")
    key = table[id_column].combine_chunks()
    pos = pc.index_in(ids.cast(key.type) if ids.type != key.type else ids, value_set=key)
    if pos.null_count:
        raise DataError(f"{source}: {pos.null_count} corpus items have no {weight_column!r} value")
    w = np.asarray(table[weight_column].combine_chunks().take(pos).cast(pa.float64())
                   .fill_null(np.nan).to_numpy(zero_copy_only=False))
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError(f"{source}: BRW column {weight_column!r} must be finite and >= 0")
    return w
