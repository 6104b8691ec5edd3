"""Full-corpus offline evaluation: every request ranks every item (no sampled negatives).

A request is one ranking: a user (MovieLens) or one search (the simulator). Its targets are the
items it interacted with in the evaluated split; the items its user saw in training (and, when
testing, in validation) are removed from its ranking. Scoring runs in chunks of requests (one
matrix product + comparisons each), never one request at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from twotower.eval.metrics import ranking_metrics
from twotower.features.dataset import ItemCorpus
from twotower.features.feature_set import Encoded, FeatureSet
from twotower.progress import chunk_starts
from twotower.types import Side

#: Compressed sparse rows: (indptr [R + 1], values)
CSR = tuple[np.ndarray, np.ndarray]


@dataclass
class EvalRequests:
    query: Encoded  # one row per request
    targets: CSR  # corpus positions of each request's targets
    exclude: CSR  # corpus positions removed from each request's ranking
    keys: np.ndarray  # the group key of each request
    unknown_targets: int = 0  # target rows whose item is not in the corpus (counted, skipped)
    #: requests whose every target is unknown to the corpus: they cannot be ranked, so they
    #: count as misses (zero in every metric) instead of silently shrinking the denominator
    missed_requests: int = 0

    def __len__(self) -> int:
        return len(self.keys)


def _codes(*arrays: np.ndarray) -> list[np.ndarray]:
    """Integer codes for keys of any type, shared across the arrays."""
    allk = np.concatenate([np.asarray(a).astype(str) if np.asarray(a).dtype == object else np.asarray(a)
                           for a in arrays])
    _, inv = np.unique(allk, return_inverse=True)
    out, start = [], 0
    for a in arrays:
        out.append(inv[start:start + len(a)])
        start += len(a)
    return out


def _csr(rows: np.ndarray, values: np.ndarray, n_rows: int) -> CSR:
    order = np.lexsort((values, rows))
    rows, values = rows[order], values[order]
    # drop duplicate (row, value) pairs
    if len(rows):
        keep = np.concatenate([[True], (rows[1:] != rows[:-1]) | (values[1:] != values[:-1])])
        rows, values = rows[keep], values[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return indptr, values


def build_requests(table: pa.Table, features: FeatureSet, corpus: ItemCorpus,
                   group_by: str | None = None, label: str | None = None,
                   seen: tuple[np.ndarray, np.ndarray] | None = None,
                   seen_by: str | None = None) -> EvalRequests:
    """Group the rows of an evaluation split into requests.

    ``seen`` = (user keys, raw item ids) of interactions to remove from the ranking of
    the request whose ``seen_by`` column has that key (the user's training history).
    """
    if label is not None:
        y = np.asarray(table[label].cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False))
        table = table.filter(pa.array(y > 0))
    keys = (np.asarray(table[group_by].to_numpy(zero_copy_only=False)) if group_by
            else np.arange(table.num_rows))
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    target_pos = corpus.positions(table[features.configs[features.item_id].source])
    known = target_pos >= 0
    targets = _csr(inverse[known], target_pos[known], len(uniq))
    first_rows = table.take(pa.array(first))
    query = features.encode(first_rows, Side.QUERY)
    if seen is not None and seen_by is not None:
        req_user = np.asarray(first_rows[seen_by].to_numpy(zero_copy_only=False))
        seen_user, seen_item = seen
        req_codes, seen_codes = _codes(req_user, seen_user)
        seen_pos = corpus.positions(seen_item)
        ok = seen_pos >= 0
        # request r excludes every seen item of its user: join on user code
        order = np.argsort(seen_codes[ok], kind="stable")
        s_codes, s_pos = seen_codes[ok][order], seen_pos[ok][order]
        lo = np.searchsorted(s_codes, req_codes, "left")
        hi = np.searchsorted(s_codes, req_codes, "right")
        counts = hi - lo
        rows = np.repeat(np.arange(len(uniq)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        values = s_pos[np.repeat(lo, counts) + within]
        # a target is never excluded from its own ranking
        t_rows = np.repeat(np.arange(len(uniq)), np.diff(targets[0]))
        is_target = np.isin(rows * (len(corpus) + 1) + values, t_rows * (len(corpus) + 1) + targets[1])
        exclude = _csr(rows[~is_target], values[~is_target], len(uniq))
    else:
        exclude = (np.zeros(len(uniq) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    has_target = np.diff(targets[0]) > 0
    missed = int(len(np.unique(inverse[~known])) - len(np.intersect1d(inverse[~known], inverse[known])))
    req = EvalRequests(query, targets, exclude, uniq, unknown_targets=int((~known).sum()),
                       missed_requests=missed)
    return _subset(req, has_target) if not has_target.all() else req


def _subset(req: EvalRequests, mask: np.ndarray) -> EvalRequests:
    def sub(csr: CSR) -> CSR:
        indptr, values = csr
        counts = np.diff(indptr)[mask]
        starts = indptr[:-1][mask]
        idx = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        return np.concatenate([[0], np.cumsum(counts)]), values[idx]

    return EvalRequests({k: v[mask] for k, v in req.query.items()}, sub(req.targets),
                        sub(req.exclude), req.keys[mask], req.unknown_targets, req.missed_requests)


@torch.no_grad()
def encode_corpus(model, corpus: ItemCorpus, batch_size: int = 4096,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Retrieval vectors of every corpus item: [N, D]."""
    model.eval()
    out = []
    for start in chunk_starts(len(corpus), batch_size, "encoding items", "item"):
        feats = {k: v.to(device) for k, v in corpus.tensors(slice(start, start + batch_size)).items()}
        out.append(model.retrieval_item(model.encode_item(feats)).float())
    return torch.cat(out)


@torch.no_grad()
def encode_queries(model, query: Encoded, batch_size: int = 4096,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Retrieval vectors of every request: [R, Vq, D]."""
    model.eval()
    n = len(next(iter(query.values())))
    out = []
    for start in chunk_starts(n, batch_size, "encoding queries", "query"):
        feats = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch_size])).to(device)
                 for k, v in query.items()}
        out.append(model.retrieval_query(model.encode_query(feats)).float())
    return torch.cat(out)


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
                      item_vecs: torch.Tensor | None = None) -> dict[str, float]:
    """HitRate@K, Recall@K, NDCG@K, MRR and item coverage over full-corpus rankings."""
    if item_vecs is None:
        item_vecs = encode_corpus(model, corpus, device=device)
    q = encode_queries(model, requests.query, device=device)
    return evaluate_vectors(q, item_vecs, requests, ks, chunk_size)


def evaluate_vectors(query_vecs: torch.Tensor, item_vecs: torch.Tensor, requests: EvalRequests,
                     ks: list[int], chunk_size: int = 1024) -> dict[str, float]:
    ranks, t_req, topk = rank_targets(query_vecs, item_vecs, requests.targets, requests.exclude,
                                      max(ks), chunk_size)
    out = ranking_metrics(ranks, t_req, len(requests), ks, topk, item_vecs.shape[0])
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
