"""Evaluation requests: the rows of a split grouped into rankings, encoded once.

A request is one ranking (a user, or one search): its query features, its targets (corpus
positions of the items it interacted with) and the items removed from its ranking (what its user
saw before). Built here, with the features and the corpus, so that opening a run
(``twotower.runs``) needs no evaluation code; ``eval.offline`` scores them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from twotower.features.dataset import ItemCorpus
from twotower.features.feature_set import Encoded, FeatureSet
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
    target_pos = corpus.positions(table[features.item_column])
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
