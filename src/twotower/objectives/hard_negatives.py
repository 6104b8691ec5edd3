"""Hard negatives as in Facebook's embedding-based retrieval: mined offline in a rank window, and
online from the batch, mixed with easy (in-batch) negatives with each kind's own log-Q.

Huang et al., "Embedding-based Retrieval in Facebook Search" (KDD 2020).

* ``mine_hard_negatives``: for every query, the items a previous model ranks in a window
  (the paper: ranks 101-500 — close enough to be hard, far enough not to be unlabelled
  positives), never one of the query's positives and, optionally, at least ``margin`` below its best
  positive's score (a further guard against false negatives). The search runs over query and
  item chunks, so memory is bounded by ``query_chunk x (item_chunk + window)`` scores whatever
  the corpus size — a naive queries x items similarity matrix of 100k x 100k floats is 40 GB.
* ``hardest_in_batch``: online hard negatives — the highest-scoring other items of the batch.
* ``hard_negative_softmax``: the softmax of each positive against easy in-batch negatives and its
  hard negatives. Each kind is corrected by the log of its own expected count per row: the
  in-batch candidates by the streaming frequency estimator, a mined negative by
  ``log(draws / window_size)`` (uniform draws from the row's window).
"""
from __future__ import annotations

import math

import torch

from twotower.errors import ConfigError
from twotower.objectives.losses import softmax_cross_entropy
from twotower.objectives.negatives import draws


@torch.no_grad()
def mine_hard_negatives(query: torch.Tensor, items: torch.Tensor, positives: torch.Tensor,
                        window: tuple[int, int] = (101, 500), draws: int = 1, margin: float | None = None,
                        generator: torch.Generator | None = None, query_chunk: int = 1024,
                        item_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives of each query from ANN-like ranks of a previous model.

    query[R, D], items[N, D] (the previous model's vectors, scored by inner product);
    positives[R, P]: item rows that are query r's positives, padded with -1 (several allowed);
    window = (first, last) 1-based ranks, inclusive. Returns ``(rows[R, draws], valid[R, draws])``:
    item rows drawn uniformly (with replacement) from the query's window after removing its
    positives and, when ``margin`` is set, every item scoring above ``best positive score -
    margin`` (a likely unlabelled positive); ``valid`` is False
    where a query's window was empty (then ``rows`` is 0 there and must be ignored).
    """
    first, last = window
    if not 1 <= first <= last:
        raise ConfigError(f"hard negatives: window must be 1 <= first <= last, got {window}")
    if draws < 1:
        raise ConfigError(f"hard negatives: draws must be >= 1, got {draws}")
    r_total, n = query.shape[0], items.shape[0]
    depth = min(last, n)
    rows = torch.zeros(r_total, draws, dtype=torch.long)
    valid = torch.zeros(r_total, draws, dtype=torch.bool)
    if depth < first:  # the corpus is smaller than the window's first rank: nothing to mine
        return rows, valid
    for start in range(0, r_total, query_chunk):
        q = query[start:start + query_chunk].float()  # [C, D]
        top_s, top_i = _top_chunked(q, items, depth, item_chunk)  # [C, depth]
        c = q.shape[0]
        cand_s, cand_i = top_s[:, first - 1:], top_i[:, first - 1:]  # the window, [C, W]
        pos = positives[start:start + c]  # [C, P], -1 = padding
        has = pos >= 0
        # one sorted membership test on (row, item) keys: memory grows with C x (W + P), never
        # with C x W x P (a user with hundreds of positives would make that gigabytes)
        row_key = torch.arange(c)[:, None] * n
        keep = ~torch.isin(row_key + cand_i, (row_key + pos)[has])  # [C, W]
        pos_s = torch.einsum("cd,cpd->cp", q, items[pos.clamp_min(0)].float())
        best = pos_s.masked_fill(~has, -math.inf).max(1).values  # [C]; -inf: no positive
        if margin is not None:  # as sentence-transformers' absolute margin: keep clear of the positive
            keep &= (cand_s < (best - margin)[:, None]) | ~has.any(1)[:, None]
        counts = keep.sum(1)  # [C]
        ok = counts > 0
        # draw uniformly among each row's kept candidates: rank of a uniform pick among the kept
        u = torch.rand(c, draws, generator=generator)
        pick = (u * counts.clamp_min(1)[:, None]).long()  # [C, draws] in [0, count)
        kept_pos = torch.cumsum(keep, 1) - 1  # index among kept of each kept column
        col = torch.where(keep, kept_pos, torch.full_like(kept_pos, -1))
        for d in range(draws):
            hit = col == pick[:, d:d + 1]  # exactly one True per row with count > 0
            where = hit.float().argmax(1)
            rows[start:start + c, d] = torch.where(ok, cand_i.gather(1, where[:, None])[:, 0], 0)
            valid[start:start + c, d] = ok
    return rows, valid


def _top_chunked(q: torch.Tensor, items: torch.Tensor, k: int, item_chunk: int):
    """Top-k inner products of ``q[C, D]`` over ``items[N, D]``, scanning ``item_chunk`` rows at a
    time and merging, so at most ``C x (item_chunk + 2k)`` scores exist at once. Each chunk's own
    top-k is taken first and only those ``2k`` candidates are merged with the running best: a top-k
    over the concatenated ``k + chunk`` columns would copy every chunk once more."""
    best_s = q.new_full((q.shape[0], 0), -math.inf)
    best_i = torch.zeros(q.shape[0], 0, dtype=torch.long)
    for start in range(0, items.shape[0], item_chunk):
        s = q @ items[start:start + item_chunk].float().T  # [C, chunk]
        top = s.topk(min(k, s.shape[1]), dim=1)
        both_s = torch.cat([best_s, top.values], 1)
        both_i = torch.cat([best_i, top.indices + start], 1)
        top = both_s.topk(min(k, both_s.shape[1]), dim=1)
        best_s, best_i = top.values, both_i.gather(1, top.indices)
    return best_s, best_i


def hardest_in_batch(logits: torch.Tensor, item_ids: torch.Tensor, count: int) -> torch.Tensor:
    """Online hard negatives: for each row of ``logits[B, B]`` (diagonal = positives), the columns
    of the ``count`` highest-scoring other items, never the row's own item (accidental hits
    excluded). Returns ``LongTensor[B, count]`` column indices."""
    if count < 1 or count >= logits.shape[1]:
        raise ConfigError(f"online hard negatives: count must be in [1, batch-1], got {count}")
    same = item_ids[:, None] == item_ids[None, :]
    scores = logits.detach().masked_fill(same, -math.inf)
    return scores.topk(count, dim=1).indices


def hard_negative_softmax(pos_logits: torch.Tensor, easy_logits: torch.Tensor, easy_ids: torch.Tensor,
                          easy_log_q: torch.Tensor | None, hard_logits: torch.Tensor,
                          hard_log_q: torch.Tensor | float, hard_valid: torch.Tensor | None = None,
                          positive_ids: torch.Tensor | None = None,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of each positive against easy and hard negatives, each kind log-Q corrected.

    pos_logits[B]; easy_logits[B, N] against the easy candidates ``easy_ids[N]`` with
    ``easy_log_q[N]`` or ``[B, N]`` (None: uncorrected) — the in-batch items, whose column i is row i's
    positive (masked here, the positive enters once through ``pos_logits``); hard_logits[B, H]
    with ``hard_log_q`` ([B, H] or a scalar: the log expected count of each hard candidate in a
    row, e.g. ``log(draws / window)``), ``hard_valid[B, H]`` (False: no hard negative there).
    The positive is corrected by its in-batch log q, as in the plain in-batch softmax. Rows'
    accidental hits (an easy candidate equal to the row's positive) are removed.
    """
    b = pos_logits.shape[0]
    rows = torch.arange(b, device=pos_logits.device)
    if positive_ids is None:
        positive_ids = easy_ids[:b]
    if easy_log_q is None:
        easy, pos = easy_logits, pos_logits
    else:  # [N] per candidate, or [B, N] when rows kept different sub-samples of the candidates
        lq = easy_log_q.to(easy_logits.dtype)
        lq = lq[None, :].expand_as(easy_logits) if lq.dim() == 1 else lq
        easy, pos = easy_logits - lq, pos_logits - lq[rows, rows]
    floor = torch.finfo(easy.dtype).min / 2
    easy = easy.masked_fill(positive_ids[:, None] == easy_ids[None, :], floor)
    hard = hard_logits - (hard_log_q if isinstance(hard_log_q, float) else hard_log_q.to(hard_logits.dtype))
    if hard_valid is not None:
        hard = hard.masked_fill(~hard_valid, floor)
    logits = torch.cat([pos[:, None], easy, hard], dim=1)  # [B, 1 + N + H]
    return softmax_cross_entropy(logits, torch.zeros_like(rows), weight)


def mined_log_q(draws: int, window_size: int) -> float:
    """Log expected count of one mined candidate per row: ``draws`` uniform picks from a window."""
    return math.log(draws / max(1, window_size))


class HardNegativeTask(torch.nn.Module):
    """The in-batch softmax with EBR's hard negatives (``objective.name: hard_negatives``).

    Candidates of row b: its positive; the in-batch items (all, or ``easy_negatives`` of them drawn
    at random); the ``online`` hardest other in-batch items; and the offline-mined corpus items of
    ``batch.extra["hard_rows"]`` (placed there by the recipe's batch source). Log-Q per kind: an
    in-batch item by the frequency estimator, plus ``log(kept share)`` when rows keep a random
    sub-sample of them; an online hard item (always kept) by the estimator alone; a mined item by
    ``log(draws / window size)``.
    """

    positives_only = True

    def __init__(self, cfg, corpus, item_id: str, seed: int = 0):
        super().__init__()
        from twotower.objectives.tasks import TASKS

        self.base = TASKS["in_batch_softmax"](cfg, None, item_id, seed)  # temperature, estimator
        self.cfg = cfg.hard_negatives
        self.corpus = {k: torch.as_tensor(v) for k, v in corpus.items()}
        first, last = self.cfg.window
        self.mined_log_q = mined_log_q(max(self.cfg.draws, 1), last - first + 1)
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, model, batch, step: int):
        q = model.encode_query(batch.query)  # [B, V, D]
        i = model.encode_item(batch.item)  # [B, V, D]
        ids, log_q = self.base.candidates(batch, step)
        logits = self.base.scale(model, model.logits(q, i))  # [B, B]
        b = logits.shape[0]
        easy_lq = log_q[None, :].expand(b, b).clone() if log_q is not None else torch.zeros(b, b)
        floor = torch.finfo(logits.dtype).min / 2
        easy = logits
        hard, hard_lq, valid = [], [], []
        if self.cfg.online:
            cols = hardest_in_batch(logits, ids, self.cfg.online)  # [B, h]
            hard.append(logits.gather(1, cols))
            hard_lq.append(easy_lq.gather(1, cols))
            valid.append(torch.ones_like(cols, dtype=torch.bool))
            easy = easy.scatter(1, cols, floor)  # each enters the softmax once, as a hard one
        if self.cfg.easy_negatives is not None:
            others = torch.rand(b, b, generator=draws(self, self.generator)).to(logits.device)
            others[torch.arange(b), torch.arange(b)] = -1.0  # the positive is not a negative
            if self.cfg.online:
                others.scatter_(1, cols, -1.0)
            pool = b - 1 - self.cfg.online
            keep_n = min(self.cfg.easy_negatives, pool)
            kept = others.topk(keep_n, dim=1).indices
            mask = torch.zeros(b, b, dtype=torch.bool, device=logits.device).scatter(1, kept, True)
            mask[torch.arange(b), torch.arange(b)] = True
            easy = easy.masked_fill(~mask, floor)
            easy_lq = easy_lq + math.log(keep_n / max(pool, 1)) * (~torch.eye(b, dtype=torch.bool))
        rows = batch.extra.get("hard_rows")
        if rows is not None and rows.numel():
            h = rows.shape[1]
            feats = {k: v.to(rows.device)[rows.reshape(-1)] for k, v in self.corpus.items()}
            mined = model.encode_item(feats)  # [B * h, V, D]
            pair = model.pair_logits(q.repeat_interleave(h, 0), mined)  # [B * h]
            hard.append(self.base.scale(model, pair).view(b, h))
            hard_lq.append(torch.full((b, h), self.mined_log_q, device=logits.device))
            valid.append(batch.extra["hard_valid"].bool())
        if hard:
            hard_logits, h_lq, h_valid = torch.cat(hard, 1), torch.cat(hard_lq, 1), torch.cat(valid, 1)
        else:
            hard_logits = logits.new_zeros(b, 0)
            h_lq, h_valid = hard_logits, torch.zeros(b, 0, dtype=torch.bool)
        loss = hard_negative_softmax(logits.diagonal(), easy, ids, easy_lq, hard_logits, h_lq,
                                     h_valid, weight=batch.weight)
        return loss, {"hard_negatives": float(h_valid.float().sum(1).mean())}

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        if state and "generator" in state:
            self.generator.set_state(state["generator"])
