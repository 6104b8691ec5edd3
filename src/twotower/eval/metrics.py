"""Ranking metrics computed from the rank of every target (0 = first place).

Ranks are pessimistic: rank = items scoring higher + other items scoring equal, so ties count
against the model and a constant scorer gets zero (BENCHMARK.md §1).
"""
from __future__ import annotations

import numpy as np


def _per_request(values: np.ndarray, request: np.ndarray, n_requests: int) -> np.ndarray:
    return np.bincount(request, weights=values, minlength=n_requests)


def hit_rate_at_k(ranks: np.ndarray, request: np.ndarray, n_requests: int, k: int) -> float:
    """Share of requests with at least one target in the top ``k``."""
    hits = _per_request((ranks < k).astype(float), request, n_requests)
    return float((hits > 0).mean())


def recall_at_k(ranks: np.ndarray, request: np.ndarray, n_requests: int, k: int) -> float:
    """Mean over requests of (targets in the top ``k``) / (targets)."""
    hits = _per_request((ranks < k).astype(float), request, n_requests)
    n_targets = np.bincount(request, minlength=n_requests)
    return float((hits / np.maximum(n_targets, 1)).mean())


def ndcg_at_k(ranks: np.ndarray, request: np.ndarray, n_requests: int, k: int) -> float:
    """Binary-relevance NDCG@k: sum of 1/log2(rank+2) over hits, over the ideal DCG."""
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    dcg = _per_request(gains, request, n_requests)
    n_targets = np.bincount(request, minlength=n_requests)
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal_cum[np.minimum(n_targets, k)]
    return float((dcg / np.maximum(idcg, 1e-12)).mean())


def mrr(ranks: np.ndarray, request: np.ndarray, n_requests: int) -> float:
    """Mean reciprocal rank of each request's best-ranked target."""
    best = np.full(n_requests, np.inf)
    np.minimum.at(best, request, ranks.astype(float))
    return float((1.0 / (best + 1.0)).mean())


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the corpus that appears in at least one request's top-k list."""
    return float(len(np.unique(topk[topk >= 0])) / max(n_items, 1))


def ranking_metrics(ranks: np.ndarray, request: np.ndarray, n_requests: int, ks: list[int],
                    topk: np.ndarray | None = None, n_items: int = 0) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate_at_k(ranks, request, n_requests, k)
        out[f"recall@{k}"] = recall_at_k(ranks, request, n_requests, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, request, n_requests, k)
        if topk is not None:
            out[f"coverage@{k}"] = item_coverage(topk[:, :k], n_items)
    out["mrr"] = mrr(ranks, request, n_requests)
    out["requests"] = n_requests
    return out


def head_tail_items(train_counts: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """bool[N]: True for tail items — the bottom ``1 - head_share`` of the corpus by training
    frequency (BENCHMARK.md: tail = the bottom 80%); ties at the boundary go to the head, and
    ordering is by count then item position, so the split is deterministic."""
    n = len(train_counts)
    order = np.lexsort((np.arange(n), train_counts))  # ascending count
    tail = np.zeros(n, dtype=bool)
    tail[order[: n - int(round(head_share * n))]] = True
    return tail


def head_tail_metrics(ranks: np.ndarray, request: np.ndarray, target_items: np.ndarray,
                      is_tail: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@k and recall@k over the targets that are head items and those that are tail items,
    each averaged over the requests that have such a target (``head_hr@k``, ``tail_hr@k``, ...),
    so a model's gain on rare items is not hidden by the head's share of the traffic."""
    out: dict[str, float] = {}
    for part, mask in (("head", ~is_tail[target_items]), ("tail", is_tail[target_items])):
        if not mask.any():
            continue
        _, req = np.unique(request[mask], return_inverse=True)
        n = int(req.max()) + 1
        for k in ks:
            out[f"{part}_hr@{k}"] = hit_rate_at_k(ranks[mask], req, n, k)
            out[f"{part}_recall@{k}"] = recall_at_k(ranks[mask], req, n, k)
        out[f"{part}_requests"] = n
    return out
