"""Full-corpus offline evaluation: every request ranks every item (no sampled negatives).

A request is one ranking: a user (MovieLens) or one search (the simulator), built by
``features.requests.build_requests``. Its targets are the items it interacted with in the
evaluated split; the items its user saw in training (and, when testing, in validation) are
removed from its ranking. Scoring runs in chunks of requests (one matrix product + comparisons
each), never one request at a time.
"""
from __future__ import annotations


import numpy as np
import torch

from twotower.eval.metrics import ranking_metrics
from twotower.features.dataset import ItemCorpus
from twotower.features.requests import CSR, EvalRequests, build_requests
from twotower.index.export import encode_corpus, encode_queries
from twotower.progress import chunk_starts

__all__ = ["EvalRequests", "build_requests", "encode_corpus", "encode_queries", "evaluate_requests",
           "evaluate_vectors", "rank_targets"]

@torch.no_grad()
def rank_targets(query_vecs: torch.Tensor, item_vecs: torch.Tensor, targets: CSR, exclude: CSR,
                 top_k: int = 0, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pessimistic rank of every target among the non-excluded items of its request.

    Returns (ranks [T], request of each target [T], top-k corpus positions [R, top_k]).
    Score of an item = max over the request's query vectors of the inner product.
    """
    if query_vecs.dim() == 2:
        query_vecs = query_vecs.unsqueeze(1)
    r, v, d = query_vecs.shape
    t_indptr, t_pos = targets
    e_indptr, e_pos = exclude
    ranks = np.empty(len(t_pos), dtype=np.int64)
    t_req = np.repeat(np.arange(r), np.diff(t_indptr))
    topk = np.full((r, top_k), -1, dtype=np.int64)
    items_t = item_vecs.T.contiguous()
    for s in chunk_starts(r, chunk_size, "evaluating", "request"):
        e = min(r, s + chunk_size)
        scores = (query_vecs[s:e].reshape(-1, d) @ items_t).reshape(e - s, v, -1).amax(dim=1)
        lo, hi = e_indptr[s], e_indptr[e]
        dev = scores.device
        ex_rows = torch.from_numpy(np.repeat(np.arange(e - s), np.diff(e_indptr[s:e + 1]))).to(dev)
        scores[ex_rows, torch.from_numpy(e_pos[lo:hi]).to(dev)] = float("-inf")
        tlo, thi = t_indptr[s], t_indptr[e]
        rows = torch.from_numpy(t_req[tlo:thi] - s).to(dev)
        cols = torch.from_numpy(t_pos[tlo:thi]).to(dev)
        target_scores = scores[rows, cols].unsqueeze(1)  # [T_c, 1]
        row_scores = scores[rows]  # [T_c, N]
        above = (row_scores > target_scores).sum(1)
        ties = (row_scores == target_scores).sum(1) - 1  # minus the target itself
        ranks[tlo:thi] = (above + ties).cpu().numpy()
        if top_k:
            kk = min(top_k, scores.shape[1])
            topk[s:e, :kk] = scores.topk(kk, dim=1).indices.cpu().numpy()
    return ranks, t_req, topk


def evaluate_requests(model, requests: EvalRequests, corpus: ItemCorpus, ks: list[int],
                      chunk_size: int = 1024, device: str | torch.device = "cpu",
                      item_vecs: torch.Tensor | None = None, extra=None) -> dict[str, float]:
    """HitRate@K, Recall@K, NDCG@K, MRR and item coverage over full-corpus rankings.
    ``extra(ranks, request of each target, top-k positions, n_requests, ks) -> dict``: more
    metrics from the same ranking (MOBIUS v2's teacher-relevant ones)."""
    if item_vecs is None:
        item_vecs = encode_corpus(model, corpus, device=device)
    q = encode_queries(model, requests.query, device=device)
    return evaluate_vectors(q, item_vecs, requests, ks, chunk_size, extra)


def evaluate_vectors(query_vecs: torch.Tensor, item_vecs: torch.Tensor, requests: EvalRequests,
                     ks: list[int], chunk_size: int = 1024, extra=None) -> dict[str, float]:
    ranks, t_req, topk = rank_targets(query_vecs, item_vecs, requests.targets, requests.exclude,
                                      max(ks), chunk_size)
    out = ranking_metrics(ranks, t_req, len(requests), ks, topk, item_vecs.shape[0])
    if extra is not None:
        out.update(extra(ranks, t_req, topk, len(requests), ks))
    if requests.missed_requests:
        ranked = len(requests)
        total = ranked + requests.missed_requests
        for key in out:
            if key.split("@")[0] in ("hr", "recall", "ndcg", "mrr"):
                out[key] *= ranked / total
        out["requests"] = total
    out["unknown_targets"] = requests.unknown_targets
    out["missed_requests"] = requests.missed_requests
    return out
