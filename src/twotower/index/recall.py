"""How approximate an index is: its top-K against exact search, measured after every build.

As FAISS's contrib tools always do, an approximate index is checked against brute force on a
sample of queries (the run's exported query vectors when there are some, else a sample of the
items themselves) and the recall is written into the manifest and printed by ``twotower index``,
so nobody serves an index without knowing what share of the true top-K it returns.

The default kind follows the corpus size: exact (``flat``) up to ``EXACT_MAX_ITEMS`` items, where
one query scans the corpus in a few milliseconds on one core (README, Index and serving: ~35
single queries/s at 1M x 64, so ~175/s at 200k), ``ivf-flat`` above (recall@100 0.994 at 92x flat
on 1M exported vectors in bench/index.py).
"""
from __future__ import annotations

import numpy as np

#: largest corpus the default kind searches exactly
EXACT_MAX_ITEMS = 200_000
#: the approximate kind chosen above it
APPROXIMATE_DEFAULT = "ivf-flat"
RECALL_K = 100
RECALL_QUERIES = 1000


def default_kind(n_items: int) -> str:
    return "flat" if n_items <= EXACT_MAX_ITEMS else APPROXIMATE_DEFAULT


def kind_reason(n_items: int) -> str:
    kind = default_kind(n_items)
    return (f"auto: {n_items:,} items {'<=' if kind == 'flat' else '>'} {EXACT_MAX_ITEMS:,} -> "
            f"{kind}{' (exact)' if kind == 'flat' else ''}")


def query_sample(items: np.ndarray, queries: np.ndarray | None, n: int = RECALL_QUERIES,
                 seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``n`` query vectors [Q, D] and where they came from. Exported queries of another
    width (multi-vector: [R, V*D]) are split into their V vectors, each of which searches."""
    d = items.shape[1]
    source = "exported query vectors"
    if queries is not None and queries.ndim == 2 and queries.shape[1] % d == 0 and len(queries):
        q = queries.reshape(-1, d)
    else:
        q, source = items, "a sample of the indexed item vectors (no exported query vectors)"
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(q), size=min(n, len(q)), replace=False) if len(q) > n else np.arange(len(q))
    return np.ascontiguousarray(q[np.sort(pick)], dtype=np.float32), source


def recall_against_exact(search, items: np.ndarray, queries: np.ndarray, k: int = RECALL_K,
                         labels: np.ndarray | None = None) -> float:
    """Mean share of the exact top-``k`` (by inner product over ``items``) that
    ``search(queries, k) -> (scores, labels)`` returns; ``labels[row]`` is the label of item row
    ``row`` (default: the row itself)."""
    import torch

    from twotower.index.exact import exact_search

    k = max(1, min(k, len(items)))
    _, truth = exact_search(torch.from_numpy(queries), torch.from_numpy(
        np.ascontiguousarray(items, dtype=np.float32)), k)
    _, found = search(queries, k)
    truth = truth.numpy() if labels is None else np.asarray(labels)[truth.numpy()]
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, np.asarray(found))]
    return float(np.mean(hits) / k)


def recall_report(search, items: np.ndarray, queries: np.ndarray | None = None,
                  k: int = RECALL_K, n_queries: int = RECALL_QUERIES, seed: int = 0,
                  labels: np.ndarray | None = None, truth: str = "the indexed vectors") -> dict:
    """The manifest's ``recall`` entry: {k, recall, queries, query_source, exact_over}."""
    q, source = query_sample(items, queries, n_queries, seed)
    k_eff = max(1, min(k, len(items)))
    return {"k": k_eff, "recall": recall_against_exact(search, items, q, k_eff, labels),
            "queries": int(len(q)), "query_source": source, "exact_over": truth}


def stored_recall(vi, n_queries: int = RECALL_QUERIES) -> dict | None:
    """Recall of an index version made by adding / removing items, against exact search over
    the vectors it stores (decoded: a quantised kind's own coding error is not counted)."""
    if vi.count == 0:
        return None
    labels, vecs = vi.reconstruct_alive()
    return recall_report(vi.ann_search, np.asarray(vecs, dtype=np.float32), None, n_queries=n_queries,
                         labels=labels, truth="the stored (decoded) vectors")
