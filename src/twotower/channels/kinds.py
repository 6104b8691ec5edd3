"""Channel kinds: each a small class behind one interface,
``retrieve(requests, k, exclude=None) -> (ids, scores)`` (per request: raw item ids, best first,
and their scores as a float array).

* ``RunChannel``: a trained twotower run + its index through the serving ``Retriever`` (DSSM,
  MOBIUS, multi-interest: each interest vector searches, results max-merged).
* ``ItemCFChannel``: item-to-item co-occurrence from the log (ItemCF with inverse user frequency,
  Sarwar et al., WWW 2001; Breese et al., UAI 1998), keyed by the request's recent items.
* ``EmbeddingI2IChannel``: item-to-item by cosine of a run's item vectors, same keys.
* ``PopularityChannel``: most interacted items, counts decayed by age when a half-life is set.
* ``PDNChannel``: PDN's trigger paths (Li et al., SIGIR 2021): a PDN run's TriggerNet weights its
  history items, its SimilarityNet table (built) gives their neighbours, paths to an item summed.
* ``BM25Channel``: lexical BM25 (Robertson & Zaragoza, 2009) of the request's text over item text,
  a sparse term matrix (scipy.sparse): one sparse product per batch, no loop per document.

Tables are built by ``build_*`` from the config and stored as ``.npz`` (numeric arrays, loaded with
``allow_pickle=False``) + ``ids.parquet`` in the channels' output folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower.errors import ArtifactError, DataError

Ids = list[list]
Scores = list[np.ndarray]


class Channel(Protocol):
    name: str
    #: request fields this channel reads (the service's accepted fields are their union)
    fields: tuple[str, ...]
    #: the kind of value each field holds (text, sequence, categorical ...): the inspector's form
    field_kinds: dict[str, str]

    def retrieve(self, requests: Sequence[dict], k: int,
                 exclude: list[list] | None = None) -> tuple[Ids, Scores]: ...


# ------------------------------------------------------------------ shared helpers
class ItemIds:
    """Raw item ids <-> positions 0..N-1 (ints or strings; ``"12"`` finds the int 12 too)."""

    def __init__(self, ids: pa.Array | np.ndarray | list):
        arr = ids if isinstance(ids, pa.Array) else pa.array(ids)
        self.array = arr
        self.values = arr.to_pylist()
        self._pos: dict = {}
        for i, v in enumerate(self.values):
            self._pos.setdefault(v, i)
            self._pos.setdefault(str(v), i)

    def __len__(self) -> int:
        return len(self.values)

    def positions(self, raw: Sequence) -> np.ndarray:
        """Positions of raw ids, -1 when unknown."""
        get = self._pos.get
        return np.fromiter((get(r, get(str(r), -1)) for r in raw), dtype=np.int64, count=len(raw))

    def take(self, pos: np.ndarray) -> list:
        v = self.values
        return [v[p] for p in pos.tolist()]


def _as_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in v.split() if x]
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return [v]


def sparse_top_k(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, k: int
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row of a CSR score matrix: the top-``k`` (columns, scores), best first; equal scores
    in column order. Vectorised: one lexsort by (row, -score, column) over all stored scores."""
    n_rows = len(indptr) - 1
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n_rows), counts)
    order = np.lexsort((indices, -data, rows))
    rank = np.arange(len(order)) - np.repeat(indptr[:-1], counts)
    keep = order[rank < k]
    kept_rows = rows[keep]
    bounds = np.searchsorted(kept_rows, np.arange(n_rows + 1))
    cols, vals = indices[keep], data[keep]
    return ([cols[bounds[r]:bounds[r + 1]] for r in range(n_rows)],
            [vals[bounds[r]:bounds[r + 1]].astype(np.float64) for r in range(n_rows)])


def _drop_excluded(mat, exclude_pos: list[np.ndarray] | None):
    """Zero the excluded (row, column) entries of a CSR matrix (and drop them)."""
    if not exclude_pos or not any(len(e) for e in exclude_pos):
        return mat
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(exclude_pos)), [len(e) for e in exclude_pos])
    cols = np.concatenate([e for e in exclude_pos]) if rows.size else np.zeros(0, np.int64)
    ok = cols >= 0
    mask = sp.csr_matrix((np.ones(int(ok.sum())), (rows[ok], cols[ok])), shape=mat.shape)
    mat = mat - mat.multiply(mask > 0)
    mat.eliminate_zeros()
    return mat


def _exclude_positions(items: ItemIds, exclude: list[list] | None, n: int) -> list[np.ndarray] | None:
    if exclude is None:
        return None
    if len(exclude) != n:
        raise DataError(f"exclude has {len(exclude)} lists for {n} requests")
    return [items.positions(_as_list(e)) for e in exclude]


def _results(items: ItemIds, cols: list[np.ndarray], vals: list[np.ndarray]) -> tuple[Ids, Scores]:
    return [items.take(c) for c in cols], vals


def _save_table(folder: Path, arrays: dict[str, np.ndarray], ids: pa.Array) -> None:
    from twotower.run import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "table.npz", lambda p: np.savez(open(p, "wb"), **arrays))
    atomic_write(folder / "ids.parquet", lambda p: pq.write_table(pa.table({"id": ids}), p))


def _load_table(folder: Path, name: str) -> tuple[dict[str, np.ndarray], pa.Array]:
    if not (folder / "table.npz").is_file() or not (folder / "ids.parquet").is_file():
        raise ArtifactError(f"channel {name!r}: {folder} holds no built table — run "
                            "`twotower channels build CONFIG.yaml`")
    try:
        with np.load(folder / "table.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        ids = pq.read_table(folder / "ids.parquet").column("id").combine_chunks()
    except Exception as err:  # noqa: BLE001 — numpy / arrow raise several kinds on a bad file
        raise ArtifactError(f"channel {name!r}: cannot read {folder} ({err})") from None
    return arrays, ids


def read_log(path: Path, columns: list[str], name: str, split_column: str | None = None,
             splits: Sequence[str] = ("train",), label: str | None = None) -> pa.Table:
    """The columns of a log (Parquet / CSV) a channel builds from; errors name the channel."""
    from twotower.data.readers import TableSource

    if not Path(path).is_file():
        raise DataError(f"channel {name!r}: log {path} not found")
    src = TableSource(path)
    want = list(dict.fromkeys(columns + ([split_column] if split_column else [])
                              + ([label] if label else [])))
    missing = [c for c in want if c not in src.columns]
    if missing:
        raise DataError(f"channel {name!r}: {path} has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(src.columns)})")
    t = src.read(want)
    if split_column:
        t = t.filter(pa.compute.is_in(t[split_column], pa.array(list(splits))))
    if label:
        y = t[label].cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
        t = t.filter(pa.array(y > 0))
    if t.num_rows == 0:
        raise DataError(f"channel {name!r}: {path} has no rows after the split / label filter")
    return t


def _recent_keys(items: ItemIds, requests: Sequence[dict], field: str, recent: int,
                 decay: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(request row, item position, weight) of each request's ``recent`` most recent known items
    (the field lists them oldest first, as MovieLens ``history``); weight = decay^(age)."""
    rows, pos, w = [], [], []
    for r, req in enumerate(requests):
        hist = _as_list(req.get(field))[-recent:]
        p = items.positions(hist)[::-1]  # most recent first
        age = np.arange(len(p))
        ok = p >= 0
        rows.append(np.full(int(ok.sum()), r))
        pos.append(p[ok])
        w.append(decay ** age[ok])
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
    return cat(rows, np.int64), cat(pos, np.int64), cat(w, np.float64)


# ------------------------------------------------------------------ run + index
class RunChannel:
    """A trained run searched through its index (the serving ``Retriever``)."""

    def __init__(self, name: str, run: str | Path, index_version: str | None = None):
        from twotower.serve.retriever import Retriever

        self.name = name
        try:
            self.retriever = Retriever(run, index_version)
        except (ArtifactError, DataError) as err:
            raise type(err)(f"channel {name!r}: {err}") from None
        self.fields = tuple(self.retriever.query_columns)
        configs = self.retriever.features.configs
        self.field_kinds = {configs[n].source: configs[n].kind.value
                            for n in self.retriever.query_features}

    def retrieve(self, requests, k, exclude=None):
        cols = set(self.fields)
        reqs = [{f: v for f, v in r.items() if f in cols} for r in requests]
        out = self.retriever.retrieve(reqs, k, exclude)["results"]
        return [r["ids"] for r in out], [np.asarray(r["scores"], dtype=np.float64) for r in out]

    def item_vectors(self) -> tuple[pa.Array, np.ndarray]:
        from twotower.index.export import read_vectors

        return read_vectors(self.retriever.run.embeddings / "items.parquet")


# ------------------------------------------------------------------ item-to-item
class _KeyedI2I:
    """Shared retrieval of item-to-item channels: a sparse neighbour matrix S [N, N]; the score
    of item j for a request = sum over its recent items i of decay^age(i) * S[i, j]."""

    fields: tuple[str, ...]

    def __init__(self, name: str, items: ItemIds, neighbours, field: str, recent: int,
                 decay: float):
        self.name, self.items, self.S = name, items, neighbours
        self.field, self.recent, self.decay = field, recent, decay
        self.fields = (field,)
        self.field_kinds = {field: "sequence"}  # the request's recent items

    def retrieve(self, requests, k, exclude=None):
        import scipy.sparse as sp

        n = len(requests)
        rows, pos, w = _recent_keys(self.items, requests, self.field, self.recent, self.decay)
        keys = sp.csr_matrix((w, (rows, pos)), shape=(n, len(self.items)))
        scores = (keys @ self.S).tocsr()
        scores = _drop_excluded(scores, _exclude_positions(self.items, exclude, n))
        scores.sort_indices()
        cols, vals = sparse_top_k(scores.indptr, scores.indices, scores.data, k)
        return _results(self.items, cols, vals)


def keep_top_per_row(mat, k: int):
    """The ``k`` largest entries of every row of a CSR matrix (vectorised)."""
    import scipy.sparse as sp

    mat = mat.tocsr()
    mat.sort_indices()
    cols, vals = sparse_top_k(mat.indptr, mat.indices, mat.data, k)
    lengths = np.array([len(c) for c in cols])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    cat = lambda xs, t: np.concatenate(xs).astype(t) if len(xs) else np.zeros(0, t)  # noqa: E731
    return sp.csr_matrix((cat(vals, np.float64), cat(cols, np.int64), indptr), shape=mat.shape)


def build_itemcf(cfg, folder: Path) -> dict:
    """Cosine co-occurrence with inverse user frequency: users' item sets X [U, N] (binary), each
    user weighted 1/log(1 + |items|) so heavy users count less, C = X^T W X without the diagonal,
    S[i, j] = C[i, j] / sqrt(n_i n_j); each row keeps its ``neighbours`` best."""
    import scipy.sparse as sp

    cols = [cfg.user, cfg.item] + ([cfg.timestamp] if cfg.timestamp else [])
    t = read_log(cfg.log, cols, cfg.name, cfg.split_column, cfg.splits, cfg.label)
    uid, u = np.unique(np.asarray(t[cfg.user].to_numpy(zero_copy_only=False)), return_inverse=True)
    iid, i = np.unique(np.asarray(t[cfg.item].to_numpy(zero_copy_only=False)), return_inverse=True)
    x = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(len(uid), len(iid)))
    x.data[:] = 1.0  # duplicates -> one
    n_user = np.asarray(x.sum(1)).ravel()
    iuf = 1.0 / np.log1p(n_user + 1.0)
    co = (x.T @ sp.diags(iuf) @ x).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    n_item = np.asarray(x.sum(0)).ravel()
    norm = 1.0 / np.sqrt(np.maximum(n_item, 1.0))
    s = sp.diags(norm) @ co @ sp.diags(norm)
    s = keep_top_per_row(s, cfg.neighbours)
    _save_table(folder, {"indptr": s.indptr, "indices": s.indices, "data": s.data}, pa.array(iid))
    return {"items": len(iid), "users": len(uid), "pairs": int(s.nnz)}


class ItemCFChannel(_KeyedI2I):
    def __init__(self, cfg, folder: Path):
        import scipy.sparse as sp

        a, ids = _load_table(folder, cfg.name)
        n = len(ids)
        s = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n, n))
        super().__init__(cfg.name, ItemIds(ids), s, cfg.history_field, cfg.recent,
                         cfg.position_decay)


class EmbeddingI2IChannel(_KeyedI2I):
    """Cosine neighbours of a run's exported item vectors (exact search, computed at load)."""

    def __init__(self, cfg):
        import scipy.sparse as sp
        import torch

        from twotower.index.exact import exact_search
        from twotower.index.export import read_vectors
        from twotower.run import RunDir

        path = RunDir(cfg.run).embeddings / "items.parquet"
        if not path.is_file():
            raise ArtifactError(f"channel {cfg.name!r}: {path} not found — train and export the run")
        ids, vecs = read_vectors(path)
        v = torch.nn.functional.normalize(torch.from_numpy(np.array(vecs, dtype=np.float32)), dim=1)
        kk = min(cfg.neighbours + 1, len(v))
        sc, pos = exact_search(v, v, kk)
        rows = np.repeat(np.arange(len(v)), kk)
        cols, data = pos.numpy().reshape(-1), sc.numpy().reshape(-1).astype(np.float64)
        ok = cols != rows  # an item is not its own neighbour
        s = sp.csr_matrix((data[ok], (rows[ok], cols[ok])), shape=(len(v), len(v)))
        super().__init__(cfg.name, ItemIds(ids), s, cfg.history_field, cfg.recent,
                         cfg.position_decay)


# ------------------------------------------------------------------ popularity / trending
def build_popularity(cfg, folder: Path) -> dict:
    """score(item) = sum over its interactions of 2^(-age / half_life) (plain counts without a
    half-life); age is measured from the log's last timestamp."""
    cols = [cfg.item] + ([cfg.timestamp] if cfg.timestamp else [])
    if cfg.half_life_days is not None and not cfg.timestamp:
        from twotower.errors import ConfigError

        raise ConfigError(f"channel {cfg.name!r}: half_life_days needs `timestamp` (a column)")
    t = read_log(cfg.log, cols, cfg.name, cfg.split_column, cfg.splits, cfg.label)
    iid, i = np.unique(np.asarray(t[cfg.item].to_numpy(zero_copy_only=False)), return_inverse=True)
    w = np.ones(len(i))
    if cfg.half_life_days is not None:
        ts = t[cfg.timestamp].cast(pa.float64()).to_numpy(zero_copy_only=False)
        age_days = (np.nanmax(ts) - ts) / 86_400.0
        w = np.exp2(-age_days / cfg.half_life_days)
    score = np.bincount(i, weights=w, minlength=len(iid))
    _save_table(folder, {"score": score}, pa.array(iid))
    return {"items": len(iid), "interactions": len(i)}


class PopularityChannel:
    def __init__(self, cfg, folder: Path):
        a, ids = _load_table(folder, cfg.name)
        self.name, self.items, self.score = cfg.name, ItemIds(ids), a["score"].astype(np.float64)
        self.order = np.lexsort((np.arange(len(self.score)), -self.score))  # ties: table order
        self.fields = ()
        self.field_kinds: dict[str, str] = {}

    def popularity(self, raw_ids: Sequence) -> np.ndarray:
        """Scores of raw ids (0 for items the log never saw)."""
        p = self.items.positions(raw_ids)
        return np.where(p >= 0, self.score[np.maximum(p, 0)], 0.0)

    def retrieve(self, requests, k, exclude=None):
        ex = _exclude_positions(self.items, exclude, len(requests))
        ids, scores = [], []
        for r in range(len(requests)):
            top = self.order[:k + (len(ex[r]) if ex else 0)]
            if ex and len(ex[r]):
                top = top[~np.isin(top, ex[r])]
            top = top[:k]
            ids.append(self.items.take(top))
            scores.append(self.score[top])
        return ids, scores


# ------------------------------------------------------------------ lexical BM25
def _term_matrix(texts: pa.Array, vocab: np.ndarray | None = None):
    """(doc-term count CSR, vocabulary): words of ``hashing.word_tokens``; with ``vocab`` given,
    unknown words are dropped (columns follow that sorted vocabulary)."""
    import scipy.sparse as sp

    from twotower.features.hashing import word_tokens

    toks = word_tokens(texts)
    offsets = np.asarray(toks.offsets.to_numpy(zero_copy_only=False))
    words = np.asarray(toks.flatten().to_numpy(zero_copy_only=False), dtype=object).astype(str)
    rows = np.repeat(np.arange(len(texts)), np.diff(offsets))
    if vocab is None:
        vocab, cols = np.unique(words, return_inverse=True)
    else:
        cols = np.searchsorted(vocab, words) if len(vocab) else np.zeros(len(words), np.int64)
        ok = (cols < len(vocab))
        ok[ok] = vocab[cols[ok]] == words[ok]
        rows, cols = rows[ok], cols[ok]
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocab)))
    return m, vocab


def build_bm25(cfg, folder: Path) -> dict:
    """Okapi BM25 term weights of every (item, word): idf(t) * tf (k1 + 1) / (tf + k1 (1 - b +
    b |d| / avgdl)), idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)); a query scores an item by the
    sum over its words."""
    import pyarrow.compute as pc

    from twotower.data.readers import TableSource

    if not Path(cfg.items).is_file():
        raise DataError(f"channel {cfg.name!r}: items {cfg.items} not found")
    src = TableSource(cfg.items)
    missing = [c for c in [cfg.item] + cfg.text if c not in src.columns]
    if missing:
        raise DataError(f"channel {cfg.name!r}: {cfg.items} has no column "
                        f"{', '.join(map(repr, missing))} (columns: {', '.join(src.columns)})")
    t = src.read([cfg.item] + cfg.text)
    text = t[cfg.text[0]].cast(pa.string()).fill_null("")
    for c in cfg.text[1:]:
        text = pc.binary_join_element_wise(text, t[c].cast(pa.string()).fill_null(""), " ")
    tf, vocab = _term_matrix(text.combine_chunks())
    n = tf.shape[0]
    dl = np.asarray(tf.sum(1)).ravel()
    avgdl = max(float(dl.mean()), 1e-9)
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    rows = np.repeat(np.arange(n), np.diff(tf.indptr))
    f = tf.data
    w = idf[tf.indices] * f * (cfg.k1 + 1) / (f + cfg.k1 * (1 - cfg.b + cfg.b * dl[rows] / avgdl))
    _save_table(folder, {"indptr": tf.indptr, "indices": tf.indices, "data": w,
                         "vocab": vocab.astype(np.str_)}, t[cfg.item].combine_chunks())
    return {"items": n, "terms": len(vocab), "avg_words": avgdl}


class BM25Channel:
    def __init__(self, cfg, folder: Path):
        import scipy.sparse as sp

        a, ids = _load_table(folder, cfg.name)
        self.name, self.items, self.vocab = cfg.name, ItemIds(ids), a["vocab"]
        self.W_t = sp.csr_matrix((a["data"], a["indices"], a["indptr"]),
                                 shape=(len(ids), len(self.vocab))).T.tocsr()  # [V, N]
        self.field = cfg.query_field
        self.fields = (cfg.query_field,)
        self.field_kinds = {cfg.query_field: "text"}

    def retrieve(self, requests, k, exclude=None):
        texts = pa.array([None if r.get(self.field) is None else str(r.get(self.field))
                          for r in requests], pa.string())
        q, _ = _term_matrix(texts, self.vocab)  # [B, V] query word counts
        scores = (q @ self.W_t).tocsr()
        scores = _drop_excluded(scores, _exclude_positions(self.items, exclude, len(requests)))
        scores.sort_indices()
        cols, vals = sparse_top_k(scores.indptr, scores.indices, scores.data, k)
        return _results(self.items, cols, vals)


# ------------------------------------------------------------------ PDN trigger paths
def _open_pdn_run(cfg):
    from twotower.models.pdn import PDN
    from twotower.runs import load_run

    try:
        trained = load_run(cfg.run)
    except (ArtifactError, DataError) as err:
        raise type(err)(f"channel {cfg.name!r}: {err}") from None
    if not isinstance(trained.model, PDN):
        from twotower.errors import ConfigError

        raise ConfigError(f"channel {cfg.name!r}: kind pdn needs a PDN run; {cfg.run} holds a "
                          f"{trained.model.registered_name!r} model")
    return trained


def build_pdn(cfg, folder: Path) -> dict:
    """PDN's SimilarityNet table: the ``neighbours`` best items s_jk of every corpus item j
    (``serve.paths.item_to_item_table``), stored with each corpus row's encoded item index."""
    import torch

    from twotower.index.export import encode_corpus
    from twotower.serve.paths import item_to_item_table

    trained = _open_pdn_run(cfg)
    corpus = trained.corpus()
    if len(corpus) < 2:
        raise DataError(f"channel {cfg.name!r}: the run's corpus has {len(corpus)} item(s); "
                        "trigger paths need at least 2")
    index = torch.as_tensor(corpus.index)
    pos, score = item_to_item_table(trained.model, index, encode_corpus(trained.model, corpus),
                                    cfg.neighbours)
    _save_table(folder, {"neighbours": pos.numpy().astype(np.int64),
                         "similarity": score.numpy().astype(np.float32),
                         "item_index": corpus.index.astype(np.int64)}, corpus.ids)
    return {"items": len(corpus), "neighbours": int(pos.shape[1])}


class PDNChannel:
    """PDN's trigger paths: each request's history items are its triggers; TriggerNet gives their
    weights, the built SimilarityNet table their neighbours, and the paths reaching the same item
    are summed (log-sum-exp, ``serve.paths.path_retrieve``): one score per item, so two triggers
    pointing at an item count for more than either alone (the generic index keeps the best one)."""

    def __init__(self, cfg, folder: Path):
        import torch

        from twotower.features.encoders import OOV, PAD
        from twotower.serve.retriever import RequestEncoder

        trained = _open_pdn_run(cfg)
        a, ids = _load_table(folder, cfg.name)
        if len(a.get("neighbours", ())) != len(ids):
            raise ArtifactError(f"channel {cfg.name!r}: {folder} is not a PDN table — run "
                                "`twotower channels build CONFIG.yaml`")
        self.name, self.items, self.model = cfg.name, ItemIds(ids), trained.model
        self.table = (torch.from_numpy(a["neighbours"]), torch.from_numpy(a["similarity"]))
        index = a["item_index"]
        # encoded item index -> corpus row (first row wins); padding / OOV are never triggers
        uniq, first = np.unique(index, return_index=True)
        self.corpus_pos = np.full(int(uniq[-1]) + 1, -1, dtype=np.int64)
        self.corpus_pos[uniq] = first
        self.corpus_pos[[p for p in (PAD, OOV) if p < len(self.corpus_pos)]] = -1
        self.encoder = RequestEncoder(trained.features)
        self.fields = tuple(self.encoder.query_columns)

    def retrieve(self, requests, k, exclude=None):
        from twotower.serve.paths import path_retrieve

        n = len(requests)
        cols = set(self.fields)
        feats = self.encoder.tensors([{f: v for f, v in r.items() if f in cols} for r in requests])
        ex = _exclude_positions(self.items, exclude, n)
        extra = max((int((e >= 0).sum()) for e in ex), default=0) if ex else 0
        scores, pos = path_retrieve(self.model, feats, self.table, self.corpus_pos,
                                    len(self.items), k + extra)
        scores, pos = scores.numpy().astype(np.float64), pos.numpy()
        out_cols, out_vals = [], []
        for r in range(n):
            keep = (pos[r] >= 0) & np.isfinite(scores[r])  # items no path reaches are dropped
            if ex and len(ex[r]):
                keep &= ~np.isin(pos[r], ex[r])
            out_cols.append(pos[r][keep][:k])
            out_vals.append(scores[r][keep][:k])
        return _results(self.items, out_cols, out_vals)


BUILDERS = {"itemcf": build_itemcf, "popularity": build_popularity, "bm25": build_bm25,
            "pdn": build_pdn}


def open_channel(cfg, folder: Path) -> Channel:
    """The channel of one config entry (built tables read from ``folder``)."""
    if cfg.kind == "run":
        return RunChannel(cfg.name, cfg.run, cfg.index_version)
    if cfg.kind == "i2i":
        return EmbeddingI2IChannel(cfg)
    return {"itemcf": ItemCFChannel, "popularity": PopularityChannel, "bm25": BM25Channel,
            "pdn": PDNChannel}[cfg.kind](cfg, folder)
