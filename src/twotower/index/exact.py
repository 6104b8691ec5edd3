"""Exact top-k search by chunked matrix products with a running top-k.

Never materialises the whole ``queries x corpus`` score matrix: the corpus is scanned in chunks
and each chunk's top-k is merged into the running result. Multi-vector queries ([B, V, D]) score
an item by the best of their vectors (max merge), as the service does.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def exact_search(queries: torch.Tensor, items: torch.Tensor, k: int,
                 chunk_size: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items by inner product. queries [B, D] or [B, V, D], items [N, D].

    Returns (scores [B, K], positions [B, K]) sorted by descending score; K = min(k, N).
    This is exact: it is the ground truth that approximate indexes are checked against.
    """
    if queries.dim() == 2:
        queries = queries.unsqueeze(1)
    b, v, d = queries.shape
    n = items.shape[0]
    k = min(k, n)
    flat = queries.reshape(b * v, d)
    best_s = torch.full((b, k), float("-inf"), device=queries.device, dtype=queries.dtype)
    best_i = torch.zeros((b, k), dtype=torch.long, device=queries.device)
    for start in range(0, n, chunk_size):
        block = items[start:start + chunk_size]
        s = (flat @ block.T).reshape(b, v, -1).amax(dim=1)  # [B, C]: max over query vectors
        kk = min(k, s.shape[1])
        cs, ci = s.topk(kk, dim=1)
        merged_s = torch.cat([best_s, cs], dim=1)
        merged_i = torch.cat([best_i, ci + start], dim=1)
        best_s, pick = merged_s.topk(k, dim=1)
        best_i = merged_i.gather(1, pick)
    return best_s, best_i
