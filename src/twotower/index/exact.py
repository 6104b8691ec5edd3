"""Exact top-k search by chunked matrix products with a running top-k.

Never materialises the whole ``queries x corpus`` score matrix: the corpus is scanned in chunks
and each chunk is merged into the running result. Multi-vector queries ([B, V, D]) score an item
by the best of their vectors (max merge), as the service does.

On CPU the scan is bound by top-k selection, not by the dot products (a full ``topk`` over every
chunk costs several times the matrix product). So the CPU path keeps, per query, the score of its
current k-th best item as a threshold and only selects among the few scores that beat it: a
chunk's row maximum (one cheap pass) says which queries can change at all, and for those the
candidates above the threshold are gathered with ``nonzero`` and merged with the running top-k.
After the first chunks the threshold is high, so almost every chunk is skipped by all but a few
queries. On accelerators a per-chunk ``topk`` is fast and avoids host syncs, so it is kept there.
"""
from __future__ import annotations

import numpy as np
import torch

_BLOCK_ELEMENTS = 1 << 22  # CPU: scores per chunk (16 MB of float32): few, large parallel steps
_GPU_BLOCK_ELEMENTS = 1 << 26  # accelerators: 256 MB of scores per chunk, few kernel launches


def auto_chunk_size(rows: int, k: int, accelerator: bool = False) -> int:
    """Items per chunk for ``rows`` query vectors: a power of two near 4M scores per chunk on CPU
    (64M on an accelerator), at least 1,024 items and ``k``, at most 262,144 (CPU) / 4M."""
    block, most = (_GPU_BLOCK_ELEMENTS, 1 << 22) if accelerator else (_BLOCK_ELEMENTS, 1 << 18)
    target = max(1, block // max(rows, 1))
    chunk = 1 << (target.bit_length() - 1)
    return max(k, min(most, max(1024, chunk)))


@torch.no_grad()
def exact_search(queries: torch.Tensor, items: torch.Tensor, k: int,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items by inner product. queries [B, D] or [B, V, D], items [N, D].

    Returns (scores [B, K], positions [B, K]) sorted by descending score; K = min(k, N).
    This is exact: it is the ground truth that approximate indexes are checked against.
    ``chunk_size``: items scored per step (default: chosen from the batch size).
    """
    if queries.dim() == 2:
        queries = queries.unsqueeze(1)
    if queries.dim() != 3 or items.dim() != 2 or queries.shape[-1] != items.shape[-1]:
        raise ValueError(f"exact_search: queries {tuple(queries.shape)} and items "
                         f"{tuple(items.shape)} must be [B, (V,) D] and [N, D] with the same D")
    b, v, _ = queries.shape
    n = items.shape[0]
    k = max(0, min(k, n))
    if k == 0 or b == 0:
        return (torch.empty((b, k), dtype=queries.dtype, device=queries.device),
                torch.empty((b, k), dtype=torch.long, device=queries.device))
    cpu = queries.device.type == "cpu"
    chunk = max(k, chunk_size or auto_chunk_size(b * v, k, accelerator=not cpu))
    flat = queries.reshape(b * v, -1)
    if cpu:
        return _pruned_scan(flat, b, v, items, k, chunk)
    return _topk_scan(flat, b, v, items, k, chunk)


def _chunk_scores(flat: torch.Tensor, b: int, v: int, block: torch.Tensor) -> torch.Tensor:
    s = flat @ block.T  # [B*V, C]
    return s if v == 1 else s.reshape(b, v, -1).amax(dim=1)  # [B, C]: max over query vectors


def _topk_scan(flat, b, v, items, k, chunk):
    """Per chunk: top-k of the chunk, merged into the running top-k (no host sync)."""
    best_s = torch.full((b, k), float("-inf"), device=flat.device, dtype=flat.dtype)
    best_i = torch.zeros((b, k), dtype=torch.long, device=flat.device)
    for start in range(0, items.shape[0], chunk):
        s = _chunk_scores(flat, b, v, items[start:start + chunk])
        cs, ci = s.topk(min(k, s.shape[1]), dim=1)
        merged_s = torch.cat([best_s, cs], dim=1)
        merged_i = torch.cat([best_i, ci + start], dim=1)
        best_s, pick = merged_s.topk(k, dim=1)
        best_i = merged_i.gather(1, pick)
    return best_s, best_i


def _pruned_scan(flat, b, v, items, k, chunk):
    """Running top-k with a per-query threshold (the current k-th best score): only scores above
    it are selected, so the scan costs about one matrix product plus one pass over the scores."""
    n, d = items.shape
    first = min(n, chunk)
    best_s, best_i = _chunk_scores(flat, b, v, items[:first]).topk(k, dim=1)
    kth = best_s[:, k - 1].clone()  # [B]
    # reused buffers: a fresh multi-MB tensor per chunk pays its page faults on every chunk
    score_buf = torch.empty(b * v * chunk, dtype=flat.dtype)
    mask_buf = torch.empty(b * chunk, dtype=torch.bool)
    # many queries: the product is compute-bound and [B, D] x [D, C] beats [B, D] x [C, D]^T, worth
    # a transposed copy of the chunk; a few queries are bound by reading the corpus: no copy
    items_t = torch.empty(d * chunk, dtype=items.dtype) if b * v >= 32 else None
    restrict = False  # after a chunk that changed few queries, look at row maxima first
    for start in range(first, n, chunk):
        block = items[start:start + chunk]
        c = block.shape[0]
        if items_t is not None:
            block_t = items_t[:d * c].view(d, c)
            block_t.copy_(block.T)
        else:
            block_t = block.T
        s = torch.mm(flat, block_t, out=score_buf[:b * v * c].view(b * v, c))
        if v > 1:
            s = s.view(b, v, c).amax(dim=1)  # [B, C]: max over query vectors
        rows = None
        sub, thr = s, kth
        if restrict:  # most queries cannot change: one max per row says which can
            rows = (s.amax(dim=1) > kth).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub, thr = s.index_select(0, rows), kth.index_select(0, rows)
        above = torch.gt(sub, thr.unsqueeze(1), out=mask_buf[:sub.numel()].view(sub.shape))
        hits = torch.from_numpy(np.flatnonzero(above.numpy()))  # numpy's is ~3x torch.nonzero
        if hits.numel() == 0:
            restrict = True
            continue
        r, col = hits // c, hits % c
        # pack each changed row's candidates into a [R, M] block, -inf padded
        local, r_in, counts = torch.unique_consecutive(r, return_inverse=True, return_counts=True)
        target = local if rows is None else rows.index_select(0, local)  # queries that change
        restrict = 4 * target.numel() < b
        slot = torch.arange(r.numel()) - (torch.cumsum(counts, 0) - counts).index_select(0, r_in)
        width = int(counts.max())
        cand_s = torch.full((target.numel(), width), float("-inf"), dtype=s.dtype)
        cand_i = torch.zeros((target.numel(), width), dtype=torch.long)
        cand_s[r_in, slot] = sub.reshape(-1).index_select(0, hits)
        cand_i[r_in, slot] = col + start
        merged_s = torch.cat([best_s.index_select(0, target), cand_s], dim=1)
        merged_i = torch.cat([best_i.index_select(0, target), cand_i], dim=1)
        top_s, pick = merged_s.topk(k, dim=1)
        best_s[target] = top_s
        best_i[target] = merged_i.gather(1, pick)
        kth[target] = top_s[:, k - 1]
    return best_s, best_i
