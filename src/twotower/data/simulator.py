"""A deterministic sponsored-search simulator: the built-in data of MOBIUS experiments.

Why a simulator: public ad logs do not ship the ground truth MOBIUS is judged on — the relevance of
every (query, ad) pair, the true CTR of every (user, query, ad) and the bid. Here every quantity is
known, so held-out evaluation can measure relevance and CPM of *any* retrieved ad, not only of the
ads the old system happened to show.

The world:

* ``words.py`` topics; each ad and query belongs to one topic and is written with its words plus a
  few generic words ("cheap", "best"). Click-bait ads are written with lure words ("amazing",
  "secret"), are barely on topic and are very attractive: **high CTR, low relevance** — the bad
  case MOBIUS mines.
* ``relevance(q, a) = clip(topicality_a · (0.45·same_topic + 0.10·related_topic) + 0.55·overlap)``
  where ``overlap`` is the share of the query's topic words found in the ad title and
  ``topicality`` is 1 for normal ads and 0.1–0.4 for click-bait ads. An ad is *relevant* when
  ``relevance >= relevance_threshold`` (τ, 0.5): same topic and at least one shared topic word.
* ``true_ctr(u, q, a, pos) = sigmoid(b0 + b1·relevance + b2·attractiveness + b3·interest_u[topic_a])
  · position_bias[pos]``.
* The impression log comes from a **legacy funnel**, so it has sample-selection bias: lexical
  candidates (ads sharing words with the query, topped up at random — broad match), ranked by a
  noisy legacy CTR estimate that over-trusts attractiveness, times bid; only the top ``slots`` are
  shown and clicks are drawn from the true CTR.

Everything is vectorised with NumPy (no Python loop per impression or search) and every random
stage draws from its own child of ``SeedSequence(seed)``, so the same seed writes the same bytes.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twotower.data.words import GENERIC_WORDS, LURE_WORDS, RELATED_TOPICS, TOPICS
from twotower.errors import ConfigError, DataError, validation_message

#: relevance = topicality · (W_TOPIC·same + W_RELATED·related) + W_OVERLAP·overlap.
W_TOPIC, W_RELATED, W_OVERLAP = 0.45, 0.10, 0.55
#: true CTR logit = b0 + b1·relevance + b2·attractiveness + b3·user interest in the ad's topic.
CTR_COEF = (-5.6, 2.0, 3.5, 2.0)
#: legacy estimate: trusts lexical overlap less than truth trusts relevance, attractiveness more.
LEGACY_REL_SCALE, LEGACY_ATTR_SCALE, LEGACY_AD_NOISE, AUCTION_NOISE = 0.5, 1.2, 0.4, 0.3
#: share of searches whose query comes from the user's interests (the rest: global popularity).
INTEREST_DRIVEN_SHARE = 0.6
#: Dirichlet concentration of user interests: small = users focus on few topics.
INTEREST_ALPHA = 0.3
#: engagement after a click: dwell seconds ~ DWELL_BASE x page length x (0.2 + 0.8 relevance) x
#: (0.5 + interest), log-normal with DWELL_SIGMA; conversion ~ CONVERSION_MAX x relevance^2 x
#: (0.3 + 0.7 interest / max interest). Relevant ads hold attention and convert, click-bait does not.
DWELL_BASE, DWELL_SIGMA, CONVERSION_MAX = 30.0, 0.5, 0.4
MAX_TITLE_WORDS, MAX_QUERY_WORDS = 6, 5
START_TIMESTAMP, LOG_SECONDS = 1_700_000_000, 30 * 86_400
SPLITS = ("train", "valid", "test")

FILES = {
    "impressions": "impressions.parquet",
    "ads": "ads.parquet",
    "queries": "queries.parquet",
    "users": "users.parquet",
    "truth": "truth.npz",
    "funnel": "funnel.parquet",
    "config": "simulator.json",
}


class SimulatorConfig(BaseModel):
    """Sizes and knobs of the simulated world. Invalid values raise ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    n_users: int = Field(2000, ge=1)
    n_queries: int = Field(3000, ge=1)
    n_ads: int = Field(5000, ge=1)
    n_advertisers: int = Field(500, ge=1)
    #: total shown impressions (searches × slots, the last search possibly cut).
    n_impressions: int = Field(200_000, ge=1)
    #: ads shown per search.
    slots: int = Field(4, ge=1)
    #: lexical candidates per query that the legacy ranker sees.
    candidates_per_search: int = Field(30, ge=1)
    clickbait_share: float = Field(0.1, ge=0.0, le=1.0)
    zipf_exponent: float = Field(1.1, gt=0.0)
    #: τ: a (query, ad) pair is relevant when relevance >= τ.
    relevance_threshold: float = Field(0.5, gt=0.0, le=1.0)
    #: last share of searches (by time) is "test", the same share before it "valid".
    holdout_share: float = Field(0.1, ge=0.0, lt=0.5)
    #: also write ``funnel.parquet``: every candidate that reached the ranking stage of every
    #: search, with its ranker score and rank, shown or auctioned-but-not-shown (LDM, DMTL).
    funnel_log: bool = False

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "simulator config", known_fields=lambda loc:
                                                 list(SimulatorConfig.model_fields))) from None

    @model_validator(mode="after")
    def _consistent(self) -> "SimulatorConfig":
        if self.slots > self.candidates_per_search:
            raise ValueError(
                f"slots ({self.slots}) must be <= candidates_per_search ({self.candidates_per_search})"
            )
        if self.candidates_per_search > self.n_ads:
            raise ValueError(
                f"candidates_per_search ({self.candidates_per_search}) must be <= n_ads ({self.n_ads})"
            )
        return self


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Vocab:
    """Word ids: generic words, then lure words, then each topic's words in topic order."""

    words: np.ndarray  # str[V]
    word_topic: np.ndarray  # int64[V], -1 for generic and lure words
    topic_names: np.ndarray  # str[T]
    topic_words: np.ndarray  # int64[T, W] word ids, -1 padded
    generic_ids: np.ndarray  # int64[G]
    lure_ids: np.ndarray  # int64[L]
    related: np.ndarray  # bool[T, T]

    @staticmethod
    def build() -> "_Vocab":
        names = list(TOPICS)
        words = list(GENERIC_WORDS) + list(LURE_WORDS)
        word_topic = [-1] * len(words)
        width = max(len(w) for w in TOPICS.values())
        topic_words = np.full((len(names), width), -1, dtype=np.int64)
        for t, name in enumerate(names):
            ids = np.arange(len(words), len(words) + len(TOPICS[name]))
            topic_words[t, : len(ids)] = ids
            words += TOPICS[name]
            word_topic += [t] * len(ids)
        related = np.zeros((len(names), len(names)), dtype=bool)
        for a, b in RELATED_TOPICS:
            related[names.index(a), names.index(b)] = related[names.index(b), names.index(a)] = True
        n_generic = len(GENERIC_WORDS)
        return _Vocab(
            words=np.array(words),
            word_topic=np.array(word_topic, dtype=np.int64),
            topic_names=np.array(names),
            topic_words=topic_words,
            generic_ids=np.arange(n_generic, dtype=np.int64),
            lure_ids=np.arange(n_generic, n_generic + len(LURE_WORDS), dtype=np.int64),
            related=related,
        )


def _pick_without_replacement(rng: np.random.Generator, pools: np.ndarray, rows: np.ndarray,
                              k: int) -> np.ndarray:
    """``k`` distinct entries per row from ``pools[rows]`` (-1 padded); -1 where a pool runs out.

    Random keys + argsort is the vectorised way to shuffle many rows at once.
    """
    pool = pools[rows]
    keys = rng.random(pool.shape)
    keys[pool < 0] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(pool, order, axis=1)


def _pad_pool(ids: np.ndarray, width: int) -> np.ndarray:
    out = np.full(width, -1, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def _compose(filler: np.ndarray, n_filler: np.ndarray, topical: np.ndarray, n_words: np.ndarray,
             width: int) -> np.ndarray:
    """Row-wise ``filler[:n_filler] + topical[:n_words - n_filler]``, -1 padded to ``width``."""
    j = np.arange(width)[None, :]
    nf, nw = n_filler[:, None], n_words[:, None]
    f = np.take_along_axis(filler, np.minimum(j, filler.shape[1] - 1), axis=1)
    t = np.take_along_axis(topical, np.clip(j - nf, 0, topical.shape[1] - 1), axis=1)
    return np.where(j < nf, f, np.where(j < nw, t, -1))


def _texts(vocab: _Vocab, word_ids: np.ndarray) -> list[str]:
    """Space-joined words of each row (one Python loop per entity, never per impression)."""
    return [" ".join(vocab.words[row[row >= 0]]) for row in word_ids]


def _onehot(word_ids: np.ndarray, n_words: int) -> np.ndarray:
    """float32[k, V] bag of words of -1 padded id rows (duplicates count once)."""
    out = np.zeros((len(word_ids), n_words + 1), dtype=np.float32)
    out[np.arange(len(word_ids))[:, None], np.where(word_ids >= 0, word_ids, n_words)] = 1.0
    return out[:, :n_words]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class SimulatorTruth:
    """Everything evaluation may know and the model may not. Ids are row positions (0-based).

    Saved as ``truth.npz`` (plain arrays, loadable with ``allow_pickle=False``).
    """

    topic_names: np.ndarray  # str[T]
    words: np.ndarray  # str[V]
    word_topic: np.ndarray  # int64[V], -1 generic / lure
    related_topics: np.ndarray  # bool[T, T]
    ad_topic: np.ndarray  # int64[A]
    ad_is_clickbait: np.ndarray  # bool[A]
    ad_topicality: np.ndarray  # float64[A]
    ad_attractiveness: np.ndarray  # float64[A]
    ad_word_ids: np.ndarray  # int64[A, 6], -1 padded
    ad_bid: np.ndarray  # float64[A]
    advertiser_topic: np.ndarray  # int64[n_advertisers]
    query_topic: np.ndarray  # int64[Q]
    query_word_ids: np.ndarray  # int64[Q, 5], -1 padded
    query_popularity: np.ndarray  # float64[Q], sums to 1
    user_interest: np.ndarray  # float64[U, T], rows sum to 1
    ctr_coef: np.ndarray  # float64[4]: b0, b1 (relevance), b2 (attractiveness), b3 (interest)
    relevance_weights: np.ndarray  # float64[3]: same topic, related topic, word overlap
    position_bias: np.ndarray  # float64[slots], position_bias[0] == 1
    candidate_ad_ids: np.ndarray  # int64[Q, C]: the legacy lexical candidates of each query
    candidate_legacy_score: np.ndarray  # float64[Q, C]: legacy estimated CTR × bid
    relevance_threshold: float = 0.5
    #: float64[A]: landing-page length factor (dwell time grows with it: the length bias that
    #: DMTL's engagement head removes); absent from truth files written before it existed.
    ad_page_length: np.ndarray | None = None
    _query_content: np.ndarray | None = field(default=None, init=False, repr=False)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``truth.npz`` atomically and byte-deterministically (fixed zip timestamps)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, value in self._arrays().items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
        return _atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, out_dir: str | Path) -> "SimulatorTruth":
        """Read ``truth.npz`` from a simulator output folder (or the file itself)."""
        path = Path(out_dir)
        if path.is_dir():
            path = path / FILES["truth"]
        if not path.is_file():
            raise DataError(f"{path}: simulator truth file not found (run the simulator first)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable truth.npz ({exc})") from None
        optional = {"ad_page_length"}
        names = [f.name for f in fields(cls) if f.init]
        missing = [n for n in names if n not in arrays and n not in optional]
        if missing:
            raise DataError(f"{path}: truth file lacks arrays {missing}")
        kwargs = {n: arrays[n] for n in names if n in arrays}
        kwargs["relevance_threshold"] = float(kwargs["relevance_threshold"])
        return cls(**kwargs)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)
                if f.init and getattr(self, f.name) is not None}

    def equals(self, other: "SimulatorTruth") -> bool:
        """Exact equality of every array (dataclass ``==`` is ambiguous on arrays)."""
        a, b = self._arrays(), other._arrays()
        return a.keys() == b.keys() and all(
            x.dtype == b[k].dtype and np.array_equal(x, b[k]) for k, x in a.items()
        )

    # -- sizes and ids -------------------------------------------------------------------------
    @property
    def n_ads(self) -> int:
        return len(self.ad_topic)

    @property
    def n_queries(self) -> int:
        return len(self.query_topic)

    @property
    def n_users(self) -> int:
        return len(self.user_interest)

    @staticmethod
    def _ids(ids: np.ndarray | int | list[int], n: int, what: str) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= n):
            raise DataError(f"{what} ids must be integers in [0, {n}); got {arr.ravel()[:5]}...")
        return arr.astype(np.int64, copy=False)

    def _content(self) -> np.ndarray:
        """Query word ids with generic words masked out (-1): relevance counts topic words only."""
        if self._query_content is None:
            q = self.query_word_ids
            self._query_content = np.where((q >= 0) & (self.word_topic[np.maximum(q, 0)] >= 0), q, -1)
        return self._query_content

    # -- relevance -----------------------------------------------------------------------------
    def _topic_part(self, q: np.ndarray, a: np.ndarray) -> np.ndarray:
        qt, at = self.query_topic[q], self.ad_topic[a]
        w = self.relevance_weights
        return self.ad_topicality[a] * (w[0] * (qt == at) + w[1] * self.related_topics[qt, at])

    def relevance(self, query_ids, ad_ids) -> np.ndarray:
        """Relevance in [0, 1] of (query, ad) pairs; the id arrays broadcast against each other."""
        q = self._ids(query_ids, self.n_queries, "query")
        a = self._ids(ad_ids, self.n_ads, "ad")
        q, a = np.broadcast_arrays(q, a)
        shape, q, a = q.shape, q.ravel(), a.ravel()
        content = self._content()[q]
        hits = ((content[:, :, None] == self.ad_word_ids[a][:, None, :]) & (content[:, :, None] >= 0))
        overlap = hits.any(axis=2).sum(axis=1) / (content >= 0).sum(axis=1)
        rel = self._topic_part(q, a) + self.relevance_weights[2] * overlap
        return np.clip(rel, 0.0, 1.0).reshape(shape)

    def relevance_matrix(self, query_ids, ad_ids) -> np.ndarray:
        """float64[m, n] relevance of every query in ``query_ids`` to every ad in ``ad_ids``."""
        q = self._ids(query_ids, self.n_queries, "query").ravel()
        a = self._ids(ad_ids, self.n_ads, "ad").ravel()
        v = len(self.words)
        content = self._content()[q]
        counts = _onehot(content, v) @ _onehot(self.ad_word_ids[a], v).T
        overlap = counts.astype(np.float64) / (content >= 0).sum(axis=1)[:, None]
        rel = self._topic_part(q[:, None], a[None, :]) + self.relevance_weights[2] * overlap
        return np.clip(rel, 0.0, 1.0)

    # -- CTR and bids --------------------------------------------------------------------------
    def _ctr_logit(self, rel: np.ndarray, u: np.ndarray, a: np.ndarray) -> np.ndarray:
        b0, b1, b2, b3 = self.ctr_coef
        interest = self.user_interest[u, self.ad_topic[a]]
        return b0 + b1 * rel + b2 * self.ad_attractiveness[a] + b3 * interest

    def true_ctr(self, user_ids, query_ids, ad_ids, positions=0) -> np.ndarray:
        """True click probability of (user, query, ad, 0-based position) tuples (broadcasting)."""
        u = self._ids(user_ids, self.n_users, "user")
        pos = self._ids(positions, len(self.position_bias), "position")
        rel = self.relevance(query_ids, ad_ids)
        a = np.broadcast_to(self._ids(ad_ids, self.n_ads, "ad"), rel.shape)
        return _sigmoid(self._ctr_logit(rel, u, a)) * self.position_bias[pos]

    def ctr_matrix(self, user_ids, query_ids, ad_ids) -> np.ndarray:
        """float64[m, n]: true CTR at the top position for m searches (user_i, query_i) × n ads."""
        u = self._ids(user_ids, self.n_users, "user").ravel()
        q = self._ids(query_ids, self.n_queries, "query").ravel()
        if len(u) != len(q):
            raise DataError(f"ctr_matrix needs one user per query; got {len(u)} users, {len(q)} queries")
        a = self._ids(ad_ids, self.n_ads, "ad").ravel()
        rel = self.relevance_matrix(q, a)
        return _sigmoid(self._ctr_logit(rel, u[:, None], a[None, :])) * self.position_bias[0]

    def bid(self, ad_ids) -> np.ndarray:
        return self.ad_bid[self._ids(ad_ids, self.n_ads, "ad")]

    # -- engagement after a click ----------------------------------------------------------------
    def expected_dwell(self, user_ids, query_ids, ad_ids) -> np.ndarray:
        """Mean dwell seconds of a click on (user, query, ad) (broadcasting)."""
        if self.ad_page_length is None:
            raise DataError("this truth file has no engagement model (simulated before dwell existed)")
        u = self._ids(user_ids, self.n_users, "user")
        rel = self.relevance(query_ids, ad_ids)
        a = np.broadcast_to(self._ids(ad_ids, self.n_ads, "ad"), rel.shape)
        interest = self.user_interest[u, self.ad_topic[a]]
        return DWELL_BASE * self.ad_page_length[a] * (0.2 + 0.8 * rel) * (0.5 + interest)

    def conversion_rate(self, user_ids, query_ids, ad_ids) -> np.ndarray:
        """Probability that a click on (user, query, ad) converts (broadcasting)."""
        u = self._ids(user_ids, self.n_users, "user")
        rel = self.relevance(query_ids, ad_ids)
        a = np.broadcast_to(self._ids(ad_ids, self.n_ads, "ad"), rel.shape)
        interest = self.user_interest[u, self.ad_topic[a]] / self.user_interest[u].max(axis=-1)
        return CONVERSION_MAX * rel ** 2 * (0.3 + 0.7 * interest)


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------
def _make_ads(cfg: SimulatorConfig, vocab: _Vocab, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ads: topic, title words, click-bait flag, attractiveness, advertiser and bid."""
    n, n_topics = cfg.n_ads, len(vocab.topic_names)
    topic = rng.integers(n_topics, size=n)
    clickbait = rng.random(n) < cfg.clickbait_share
    n_words = rng.integers(3, MAX_TITLE_WORDS + 1, size=n)
    # normal ads: mostly topic words, ~25% generic; click-bait: lure/generic words, maybe 1 topic word.
    n_topical = np.where(clickbait, (rng.random(n) < 0.35).astype(np.int64),
                         n_words - rng.binomial(n_words - 1, 0.25))
    lure_pool = np.concatenate([vocab.lure_ids, vocab.generic_ids])
    fillers = np.stack([_pad_pool(vocab.generic_ids, len(lure_pool)), lure_pool])
    filler = _pick_without_replacement(rng, fillers, clickbait.astype(np.int64), MAX_TITLE_WORDS)
    topical = _pick_without_replacement(rng, vocab.topic_words, topic, MAX_TITLE_WORDS)
    word_ids = _compose(filler, n_words - n_topical, topical, n_words, MAX_TITLE_WORDS)

    topicality = np.where(clickbait, rng.uniform(0.1, 0.4, size=n), 1.0)
    attractiveness = np.where(clickbait, rng.beta(8.0, 2.0, size=n), rng.beta(2.0, 5.0, size=n))

    # advertiser k serves topic k % T; an ad picks one of its topic's advertisers.
    n_adv = cfg.n_advertisers
    adv_topic = np.arange(n_adv, dtype=np.int64) % n_topics
    per_topic = np.bincount(adv_topic, minlength=n_topics)[topic]
    own = topic + n_topics * np.floor(rng.random(n) * np.maximum(per_topic, 1)).astype(np.int64)
    advertiser = np.where(per_topic > 0, own, rng.integers(n_adv, size=n))

    # bids: topic price level × advertiser budget × ad noise (log-normal), in cents.
    topic_level = rng.lognormal(0.0, 0.4, size=n_topics)
    adv_level = rng.lognormal(np.log(0.8), 0.5, size=n_adv)
    bid = topic_level[topic] * adv_level[advertiser] * rng.lognormal(0.0, 0.3, size=n)
    bid = np.maximum(np.round(bid, 2), 0.05)
    return dict(topic=topic, clickbait=clickbait, word_ids=word_ids, topicality=topicality,
                attractiveness=attractiveness, advertiser=advertiser, adv_topic=adv_topic, bid=bid)


def _make_queries(cfg: SimulatorConfig, vocab: _Vocab, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """Distinct queries: 1–4 topic words, sometimes a generic word; Zipf popularity."""
    n_topics = len(vocab.topic_names)
    m = 3 * cfg.n_queries + 100  # oversample, then keep the first distinct ones
    topic = rng.integers(n_topics, size=m)
    n_topical = rng.choice(np.arange(1, 5), size=m, p=[0.3, 0.35, 0.2, 0.15])
    n_generic = (rng.random(m) < 0.35).astype(np.int64)
    generic = rng.choice(vocab.generic_ids, size=(m, 1))
    topical = _pick_without_replacement(rng, vocab.topic_words, topic, MAX_QUERY_WORDS)
    word_ids = _compose(generic, n_generic, topical, n_generic + n_topical, MAX_QUERY_WORDS)
    _, first = np.unique(np.sort(word_ids, axis=1), axis=0, return_index=True)
    keep = np.sort(first)[: cfg.n_queries]
    if len(keep) < cfg.n_queries:
        raise ConfigError(f"n_queries={cfg.n_queries} is more distinct queries than the word lists "
                          f"allow here ({len(keep)}); use fewer queries")
    ranks = rng.permutation(cfg.n_queries) + 1.0
    popularity = ranks ** -cfg.zipf_exponent
    return dict(topic=topic[keep], word_ids=word_ids[keep], popularity=popularity / popularity.sum())


#: worlds with more (query, ad) cells than this take the inverted-index path of the legacy
#: candidate generation; smaller ones the dense product (so their logs keep their exact bytes)
DENSE_CANDIDATE_CELLS = 1 << 27


def _lexical_candidates(cfg: SimulatorConfig, vocab: _Vocab, query_words: np.ndarray,
                        ad_words: np.ndarray, rng: np.random.Generator, chunk: int = 512,
                        dense_cells: int = DENSE_CANDIDATE_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """Legacy candidate generation: top ads by number of shared words (any word, generic too).

    Ties are broken by a seeded random key below one shared word, so zero-overlap ads fill the
    list at random when a query has too few lexical matches (broad match). Returns candidate ids
    int64[Q, C] (best first) and their shared-word counts.
    """
    if len(query_words) * len(ad_words) > dense_cells:
        return _lexical_candidates_sparse(cfg, vocab, query_words, ad_words, rng)
    v, c = len(vocab.words), cfg.candidates_per_search
    ad_oh = _onehot(ad_words, v).T.copy()
    cand = np.empty((len(query_words), c), dtype=np.int64)
    shared = np.empty((len(query_words), c), dtype=np.int64)
    for start in range(0, len(query_words), chunk):  # bounded memory: chunk × n_ads scores
        counts = _onehot(query_words[start:start + chunk], v) @ ad_oh
        score = counts + 0.99 * rng.random(counts.shape, dtype=np.float32)
        top = np.argpartition(-score, c - 1, axis=1)[:, :c]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), 1), 1)
        cand[start:start + chunk] = top
        shared[start:start + chunk] = np.take_along_axis(counts, top, 1).astype(np.int64)
    return cand, shared


def _lexical_candidates_sparse(cfg: SimulatorConfig, vocab: _Vocab, query_words: np.ndarray,
                               ad_words: np.ndarray, rng: np.random.Generator,
                               chunk_pairs: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """``_lexical_candidates`` of a large world through an inverted index (word -> ads): the cost
    follows the (query, ad) pairs that share a word, not Q x n_ads (20k queries x 100k ads: the
    dense product's 2G scores and their partial sort were ~90% of a 100 s simulation)."""
    c, n_ads, n_q = cfg.candidates_per_search, len(ad_words), len(query_words)
    a_w = _distinct_per_row(ad_words)
    rows, cols = np.nonzero(a_w >= 0)
    words = a_w[rows, cols]
    by_word = np.argsort(words, kind="stable")
    ads_of_word = rows[by_word]  # ads grouped by word
    df = np.bincount(words, minlength=len(vocab.words))
    word_start = np.concatenate([[0], np.cumsum(df)[:-1]])
    q_w = _distinct_per_row(query_words)
    q_pairs = np.where(q_w >= 0, df[np.maximum(q_w, 0)], 0).sum(axis=1)  # pairs per query

    cand = np.full((n_q, c), -1, dtype=np.int64)
    shared = np.zeros((n_q, c), dtype=np.int64)
    found = np.zeros(n_q, dtype=np.int64)
    start = 0
    cum = np.cumsum(q_pairs)
    while start < n_q:  # chunks of queries with at most ~chunk_pairs word-sharing pairs
        base = cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + chunk_pairs, side="right")))
        qr, qc = np.nonzero(q_w[start:stop] >= 0)
        w = q_w[start:stop][qr, qc]
        lengths = df[w]
        total = int(lengths.sum())
        offsets = np.repeat(word_start[w] - (np.cumsum(lengths) - lengths), lengths)
        ad = ads_of_word[offsets + np.arange(total)]
        code = np.sort(np.repeat(qr, lengths).astype(np.int64) * n_ads + ad)
        new = np.r_[True, code[1:] != code[:-1]] if total else np.zeros(0, dtype=bool)
        uniq = code[new]
        counts = np.diff(np.r_[np.flatnonzero(new), total])
        row = uniq // n_ads
        keep = _top_by_count(row, counts, stop - start, c, rng)
        row, counts, ads = row[keep], counts[keep], uniq[keep] % n_ads
        row_start = np.searchsorted(row, np.arange(stop - start))
        rank = np.arange(len(row)) - row_start[row]
        top = rank < c
        r, k = row[top] + start, rank[top]
        cand[r, k] = ads[top]
        shared[r, k] = counts[top]
        found[start:stop] = np.minimum(np.bincount(row, minlength=stop - start), c)
        start = stop
    # queries with fewer than C word-sharing ads: the dense draw over every ad (counts + noise),
    # exact and cheap because such queries are rare in a large world and the world small otherwise
    short = np.flatnonzero(found < c)
    v = len(vocab.words)
    ad_oh = _onehot(ad_words, v).T.copy() if len(short) else None
    per = max(1, (1 << 22) // max(n_ads, 1))
    for s in range(0, len(short), per):
        qs = short[s:s + per]
        counts = _onehot(query_words[qs], v) @ ad_oh
        score = counts + 0.99 * rng.random(counts.shape, dtype=np.float32)
        top = np.argpartition(-score, c - 1, axis=1)[:, :c]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), 1), 1)
        cand[qs] = top
        shared[qs] = np.take_along_axis(counts, top, 1).astype(np.int64)
    return cand, shared


def _top_by_count(row: np.ndarray, counts: np.ndarray, n_rows: int, c: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Positions of each row's top ``c`` pairs by ``counts`` (ties at random), ordered by row, then
    best first. ``row`` is sorted; ``counts`` are small ints (< 8).

    Only the tied level at each row's cut-off needs random keys, and only its ~``c`` smallest keys
    can win: pairs whose key is above a generous bound are dropped before the sort (a row left with
    too few is redone with every pair), so the result equals a full sort by (count, key) while
    sorting ~``c`` pairs per row instead of thousands."""
    hist = np.bincount(row * 8 + counts, minlength=n_rows * 8).reshape(n_rows, 8)
    above = np.concatenate([np.cumsum(hist[:, ::-1], axis=1)[:, ::-1],
                            np.zeros((n_rows, 1), np.int64)], axis=1)  # above[:, t] = #(count >= t)
    enough = above[:, 1:8] >= c  # t = 1..7
    cut = np.where(enough.any(1), 7 - np.argmax(enough[:, ::-1], axis=1), 1)
    rows = np.arange(n_rows)
    need = np.maximum(c - above[rows, cut + 1], 0)
    level = np.maximum(hist[rows, cut], 1)
    bound = np.minimum(1.0, (need + 4.0 * np.sqrt(need) + 8.0) / level)
    key = rng.random(len(row))
    at_cut = counts == cut[row]
    keep = (counts > cut[row]) | (at_cut & (key < bound[row]))
    short = np.bincount(row[keep & at_cut], minlength=n_rows) < need
    keep |= at_cut & short[row]
    pos = np.flatnonzero(keep)
    order = np.argsort(row[pos] * 8.0 + (7 - counts[pos]) + 0.99 * key[pos])
    return pos[order]


def _distinct_per_row(ids: np.ndarray) -> np.ndarray:
    """-1 padded id rows with repeated ids of a row replaced by -1 (a word counts once)."""
    s = np.sort(ids, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    return np.where(dup, -1, s)


def _sample_queries(truth: SimulatorTruth, users: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray:
    """Query of each search: from the user's interests (topic, then popularity within it) or
    from global Zipf popularity. Inverse-CDF sampling keeps it vectorised."""
    s, n_topics = len(users), len(truth.topic_names)
    order = np.argsort(truth.query_topic, kind="stable")
    cum = np.cumsum(truth.query_popularity[order])
    total = cum[-1]
    counts = np.bincount(truth.query_topic, minlength=n_topics)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mass = np.bincount(truth.query_topic, weights=truth.query_popularity, minlength=n_topics)
    before = np.concatenate([[0.0], np.cumsum(mass)[:-1]])

    icum = np.cumsum(truth.user_interest[users], axis=1)
    topic = np.minimum((icum < rng.random((s, 1)) * icum[:, -1:]).sum(axis=1), n_topics - 1)
    by_interest = (rng.random(s) < INTEREST_DRIVEN_SHARE) & (counts[topic] > 0)
    u = rng.random(s)
    x = np.where(by_interest, before[topic] + u * mass[topic], u * total)
    idx = np.minimum(np.searchsorted(cum, x, side="right"), len(cum) - 1)
    lo, hi = first[topic], first[topic] + counts[topic] - 1
    idx = np.where(by_interest, np.clip(idx, lo, np.maximum(hi, lo)), idx)
    return order[idx]


@dataclass
class SimulatedLog:
    """What ``simulate`` wrote: file paths and counts (and the in-memory truth)."""

    out_dir: Path
    impressions_path: Path
    ads_path: Path
    queries_path: Path
    users_path: Path
    truth_path: Path
    config_path: Path
    n_impressions: int
    n_searches: int
    n_clicks: int
    n_ads: int
    n_queries: int
    n_users: int
    truth: SimulatorTruth = field(repr=False)
    funnel_path: Path | None = None  # with ``funnel_log``

    @property
    def click_rate(self) -> float:
        return self.n_clicks / max(self.n_impressions, 1)


def simulate(cfg: SimulatorConfig, out_dir: str | Path) -> SimulatedLog:
    """Simulate the world and the legacy funnel; write the Parquet logs, ``truth.npz`` and
    ``simulator.json`` into ``out_dir`` (each file atomically)."""
    if not isinstance(cfg, SimulatorConfig):
        raise ConfigError(f"simulate() needs a SimulatorConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    vocab = _Vocab.build()
    # spawn(7)'s first six children are spawn(6)'s: adding the engagement stream changed no draw
    r_ads, r_queries, r_users, r_cands, r_legacy, r_search, r_engage = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(7))
    ads = _make_ads(cfg, vocab, r_ads)
    queries = _make_queries(cfg, vocab, r_queries)
    interest = r_users.dirichlet(np.full(len(vocab.topic_names), INTEREST_ALPHA), size=cfg.n_users)
    interest = interest / interest.sum(axis=1, keepdims=True)

    # legacy funnel, stage 1: lexical candidates and a legacy CTR estimate (per query, fixed).
    cand, shared = _lexical_candidates(cfg, vocab, queries["word_ids"], ads["word_ids"], r_cands)
    b0, b1, b2, _ = CTR_COEF
    lex_share = shared / (queries["word_ids"] >= 0).sum(axis=1, keepdims=True)
    ad_noise = r_legacy.normal(0.0, LEGACY_AD_NOISE, size=cfg.n_ads)
    legacy_logit = (b0 + LEGACY_REL_SCALE * b1 * lex_share
                    + LEGACY_ATTR_SCALE * b2 * ads["attractiveness"][cand] + ad_noise[cand])
    legacy_score = _sigmoid(legacy_logit) * ads["bid"][cand]

    truth = SimulatorTruth(
        topic_names=vocab.topic_names, words=vocab.words, word_topic=vocab.word_topic,
        related_topics=vocab.related, ad_topic=ads["topic"], ad_is_clickbait=ads["clickbait"],
        ad_topicality=ads["topicality"], ad_attractiveness=ads["attractiveness"],
        ad_word_ids=ads["word_ids"], ad_bid=ads["bid"], advertiser_topic=ads["adv_topic"],
        query_topic=queries["topic"], query_word_ids=queries["word_ids"],
        query_popularity=queries["popularity"], user_interest=interest,
        ctr_coef=np.array(CTR_COEF, dtype=np.float64),
        relevance_weights=np.array([W_TOPIC, W_RELATED, W_OVERLAP]),
        position_bias=1.0 / (1.0 + np.arange(cfg.slots)) ** 0.8,
        candidate_ad_ids=cand, candidate_legacy_score=legacy_score,
        relevance_threshold=float(cfg.relevance_threshold),
        ad_page_length=r_engage.lognormal(0.0, 0.4, size=cfg.n_ads),
    )

    # stage 2: searches in time order; auction over the candidates with per-search noise.
    n_search = math.ceil(cfg.n_impressions / cfg.slots)
    users = r_search.integers(cfg.n_users, size=n_search)
    qids = _sample_queries(truth, users, r_search)
    gap = LOG_SECONDS / n_search
    timestamp = START_TIMESTAMP + np.cumsum(1 + r_search.poisson(max(gap - 1.0, 0.0), n_search))
    noisy = legacy_score[qids] * np.exp(r_search.normal(0.0, AUCTION_NOISE, (n_search, cand.shape[1])))
    top = np.argpartition(-noisy, cfg.slots - 1, axis=1)[:, : cfg.slots]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(noisy, top, 1), 1), 1)

    # stage 3: impressions (search-major, position-minor), cut to exactly n_impressions; clicks.
    n = cfg.n_impressions
    search = np.repeat(np.arange(n_search, dtype=np.int64), cfg.slots)[:n]
    position = np.tile(np.arange(cfg.slots, dtype=np.int64), n_search)[:n]
    q, u = qids[search], users[search]
    slot_in_cands = top.ravel()[:n]
    ad = cand[q, slot_in_cands]
    rel_cands = truth.relevance(np.repeat(np.arange(cfg.n_queries), cand.shape[1]).reshape(cand.shape),
                                cand)
    ctr = _sigmoid(truth._ctr_logit(rel_cands[q, slot_in_cands], u, ad)) * truth.position_bias[position]
    click = (r_search.random(n) < ctr).astype(np.int8)
    dwell, conversion = _engagement(truth, u, q, ad, click, r_engage)

    n_holdout = int(round(cfg.holdout_share * n_search))
    split = np.zeros(n_search, dtype=np.int64)
    split[n_search - 2 * n_holdout:] = 1
    split[n_search - n_holdout:] = 2

    query_text = pa.array(_texts(vocab, queries["word_ids"]), pa.string())
    ad_title = pa.array(_texts(vocab, ads["word_ids"]), pa.string())
    topic_name = pa.array(vocab.topic_names.tolist(), pa.string())
    ad_category = topic_name.take(pa.array(ads["topic"]))
    impressions = pa.table({
        "search_id": pa.array(search, pa.int64()),
        "timestamp": pa.array(timestamp[search], pa.int64()),
        "split": pa.array(list(SPLITS), pa.string()).take(pa.array(split[search])),
        "user_id": pa.array(u, pa.int64()),
        "query_id": pa.array(q, pa.int64()),
        "query_text": query_text.take(pa.array(q)),
        "ad_id": pa.array(ad, pa.int64()),
        "ad_title": ad_title.take(pa.array(ad)),
        "ad_category": ad_category.take(pa.array(ad)),
        "advertiser_id": pa.array(ads["advertiser"][ad], pa.int64()),
        "bid": pa.array(ads["bid"][ad], pa.float64()),
        "position": pa.array(position, pa.int32()),
        "click": pa.array(click, pa.int8()),
        "dwell": pa.array(dwell, pa.float64()),
        "conversion": pa.array(conversion, pa.int8()),
        "page_length": pa.array(truth.ad_page_length[ad], pa.float64()),
    })
    ads_table = pa.table({
        "ad_id": pa.array(np.arange(cfg.n_ads), pa.int64()),
        "ad_title": ad_title,
        "ad_category": ad_category,
        "advertiser_id": pa.array(ads["advertiser"], pa.int64()),
        "bid": pa.array(ads["bid"], pa.float64()),
    })
    queries_table = pa.table({
        "query_id": pa.array(np.arange(cfg.n_queries), pa.int64()),
        "query_text": query_text,
        "topic": topic_name.take(pa.array(queries["topic"])),
    })
    users_table = pa.table({
        "user_id": pa.array(np.arange(cfg.n_users), pa.int64()),
        "user_segment": topic_name.take(pa.array(interest.argmax(axis=1))),
    })

    paths = {k: out / v for k, v in FILES.items()}
    for key, table in (("impressions", impressions), ("ads", ads_table),
                       ("queries", queries_table), ("users", users_table)):
        _atomic_write_parquet(table, paths[key])
    if cfg.funnel_log:
        funnel = _funnel_table(cfg, truth, impressions, qids, users, cand, noisy, split, timestamp)
        _atomic_write_parquet(funnel, paths["funnel"])
    truth.save(paths["truth"])
    _atomic_write_bytes(paths["config"], (cfg.model_dump_json(indent=2) + "\n").encode())
    return SimulatedLog(
        out_dir=out, impressions_path=paths["impressions"], ads_path=paths["ads"],
        queries_path=paths["queries"], users_path=paths["users"], truth_path=paths["truth"],
        config_path=paths["config"], n_impressions=n, n_searches=n_search,
        n_clicks=int(click.sum()), n_ads=cfg.n_ads, n_queries=cfg.n_queries,
        n_users=cfg.n_users, truth=truth, funnel_path=paths["funnel"] if cfg.funnel_log else None,
    )


def _engagement(truth: SimulatorTruth, u: np.ndarray, q: np.ndarray, ad: np.ndarray,
                click: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dwell seconds and conversion of each impression: drawn for clicks, 0 otherwise."""
    mean = truth.expected_dwell(u, q, ad)
    dwell = np.where(click > 0, mean * rng.lognormal(-DWELL_SIGMA ** 2 / 2, DWELL_SIGMA, len(mean)), 0.0)
    conversion = (click > 0) & (rng.random(len(mean)) < truth.conversion_rate(u, q, ad))
    return np.round(dwell, 2), conversion.astype(np.int8)


def _funnel_table(cfg: SimulatorConfig, truth: SimulatorTruth, impressions: pa.Table,
                  qids: np.ndarray, users: np.ndarray, cand: np.ndarray, noisy: np.ndarray,
                  split: np.ndarray, timestamp: np.ndarray) -> pa.Table:
    """The ranking-stage log: one row per (search, candidate) the auction ranked.

    ``ranker_score`` is the legacy estimated CTR x bid with the search's auction noise (what the
    ranker ordered by), ``ranker_rank`` its 1-based rank among the search's candidates, ``shown``
    whether it won a slot (and was logged as an impression) — the others were auctioned but not
    shown. Shown rows carry the impression's position, click, dwell and conversion.
    """
    n_search, c = noisy.shape
    search = np.repeat(np.arange(n_search, dtype=np.int64), c)
    rank = np.argsort(np.argsort(-noisy, axis=1), axis=1) + 1  # [S, C], 1 = best
    ad = cand[qids][np.arange(n_search)[:, None], np.arange(c)[None, :]].ravel()
    imp_search = impressions["search_id"].to_numpy()
    imp_ad = impressions["ad_id"].to_numpy()
    # shown = the (search, ad) pair has an impression row (the last search may be cut short)
    key = search * cfg.n_ads + ad
    imp_key = imp_search * cfg.n_ads + imp_ad
    order = np.argsort(imp_key)
    where = np.searchsorted(imp_key[order], key)
    found = where < len(imp_key)
    shown = np.zeros(len(key), dtype=bool)
    shown[found] = imp_key[order][where[found]] == key[found]
    row = np.where(shown, order[np.minimum(where, len(order) - 1)], 0)

    def from_impressions(col: str, fill, dtype) -> pa.Array:
        values = impressions[col].to_numpy()[row]
        return pa.array(np.where(shown, values, fill), dtype)

    q, u = qids[search], users[search]
    return pa.table({
        "search_id": pa.array(search, pa.int64()),
        "timestamp": pa.array(timestamp[search], pa.int64()),
        "split": pa.array(list(SPLITS), pa.string()).take(pa.array(split[search])),
        "user_id": pa.array(u, pa.int64()),
        "query_id": pa.array(q, pa.int64()),
        "ad_id": pa.array(ad, pa.int64()),
        "bid": pa.array(truth.ad_bid[ad], pa.float64()),
        "ranker_score": pa.array(noisy.ravel(), pa.float64()),
        "ranker_rank": pa.array(rank.ravel(), pa.int32()),
        "shown": pa.array(shown, pa.bool_()),
        "position": from_impressions("position", -1, pa.int32()),
        "click": from_impressions("click", 0, pa.int8()),
        "dwell": from_impressions("dwell", 0.0, pa.float64()),
        "conversion": from_impressions("conversion", 0, pa.int8()),
    })


def load_config(out_dir: str | Path) -> SimulatorConfig:
    """The config a simulator folder was written with."""
    path = Path(out_dir) / FILES["config"]
    if not path.is_file():
        raise DataError(f"{path}: simulator config not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return SimulatorConfig(**data)


# ----------------------------------------------------------------------------------------------
# Atomic writes: a reader never sees a half-written file.
# ----------------------------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _atomic_write_parquet(table: pa.Table, path: Path) -> Path:
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
