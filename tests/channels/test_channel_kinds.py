"""Channel kinds against plain references: ItemCF, BM25, popularity, embedding i2i."""
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.channels.config import validate_channels
from twotower.channels.kinds import (BM25Channel, ItemCFChannel, PopularityChannel, build_bm25,
                                     build_itemcf, build_popularity, sparse_top_k)
from twotower.errors import ConfigError, DataError


def cfg_of(tmp_path, *channels):
    return validate_channels({"name": "t", "output": str(tmp_path / "out"), "channels": list(channels)})


@pytest.fixture
def log(tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 8)
    items = np.concatenate([rng.choice(25, 8, replace=False) for _ in range(30)])
    ts = np.arange(len(users)) * 3600
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": ts,
                             "split": ["train"] * (len(users) - 5) + ["test"] * 5}), path)
    return path, users, items, ts


def test_sparse_top_k_matches_argsort():
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    dense = rng.random((6, 40)) * (rng.random((6, 40)) < 0.3)
    m = sp.csr_matrix(dense)
    cols, vals = sparse_top_k(m.indptr, m.indices, m.data, 5)
    for r in range(6):
        nz = np.flatnonzero(dense[r])
        ref = nz[np.argsort(-dense[r, nz], kind="stable")][:5]
        assert cols[r].tolist() == ref.tolist()
        assert np.allclose(vals[r], dense[r, ref])


def test_itemcf_matches_a_looped_reference(tmp_path, log):
    path, users, items, _ = log
    cfg = cfg_of(tmp_path, {"name": "cf", "kind": "itemcf", "log": str(path), "split_column": "split",
                            "neighbours": 1000, "recent": 3, "position_decay": 0.5})
    ch_cfg = cfg.channels[0]
    build_itemcf(ch_cfg, tmp_path / "out" / "cf")
    ch = ItemCFChannel(ch_cfg, tmp_path / "out" / "cf")
    train = np.arange(len(users)) < len(users) - 5
    baskets = {}
    for u, i in zip(users[train], items[train]):
        baskets.setdefault(u, set()).add(i)
    n_item = {i: sum(i in b for b in baskets.values()) for i in range(25)}

    def sim(i, j):
        co = sum(1 / math.log1p(len(b) + 1) for b in baskets.values() if i in b and j in b)
        return co / math.sqrt(max(n_item[i], 1) * max(n_item[j], 1)) if i != j else 0.0

    history = [3, 7, 11, 2]  # oldest first; the 3 most recent are 7, 11, 2
    ids, scores = ch.retrieve([{"history": history}], 10, exclude=[[7]])
    ref = {j: 1.0 * sim(2, j) + 0.5 * sim(11, j) + 0.25 * sim(7, j) for j in range(25)}
    ref.pop(7)
    assert len(ids[0]) == 10 and 7 not in ids[0]
    for j, s in zip(ids[0], scores[0]):
        assert s == pytest.approx(ref[j])
    best = sorted(ref.values(), reverse=True)[:10]
    assert np.allclose(sorted(scores[0], reverse=True), best)
    # unknown / empty history: no results, no crash
    ids, _ = ch.retrieve([{"history": [999]}, {}], 5)
    assert ids == [[], []]


def test_bm25_matches_a_plain_formula(tmp_path):
    docs = ["red running shoes", "blue shoes shoes", "red car", "fast red running car cheap", ""]
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"ad_id": [10, 11, 12, 13, 14], "title": docs,
                             "cat": ["a", "b", "c", "d", None]}), path)
    cfg = cfg_of(tmp_path, {"name": "lex", "kind": "bm25", "items": str(path), "item": "ad_id",
                            "text": ["title"]})
    build_bm25(cfg.channels[0], tmp_path / "out" / "lex")
    ch = BM25Channel(cfg.channels[0], tmp_path / "out" / "lex")
    toks = [d.split() for d in docs]
    n, avgdl = len(docs), sum(map(len, toks)) / len(docs)

    def bm25(q, d, k1=1.2, b=0.75):
        s = 0.0
        for t in q.split():
            df = sum(t in x for x in toks)
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            f = toks[d].count(t)
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(toks[d]) / avgdl)) if f else 0.0
        return s

    ids, scores = ch.retrieve([{"query_text": "Red running"}, {"query_text": "zzz"},
                               {"query_text": None}], 5)
    ref = sorted(((bm25("red running", d), 10 + d) for d in range(n) if bm25("red running", d) > 0),
                 key=lambda x: -x[0])
    assert ids[0] == [i for _, i in ref]
    assert np.allclose(scores[0], [s for s, _ in ref])
    assert ids[1] == [] and ids[2] == []


def test_popularity_with_half_life_and_exclusion(tmp_path, log):
    path, users, items, ts = log
    cfg = cfg_of(tmp_path, {"name": "pop", "kind": "popularity", "log": str(path),
                            "timestamp": "timestamp", "half_life_days": 2.0})
    build_popularity(cfg.channels[0], tmp_path / "out" / "pop")
    ch = PopularityChannel(cfg.channels[0], tmp_path / "out" / "pop")
    age = (ts.max() - ts) / 86400
    ref = np.bincount(items, weights=0.5 ** (age / 2.0), minlength=25)
    ids, scores = ch.retrieve([{}, {}], 5, exclude=[[], [int(np.argmax(ref))]])
    assert ids[0][0] == int(np.argmax(ref)) and scores[0][0] == pytest.approx(ref.max())
    assert int(np.argmax(ref)) not in ids[1] and len(ids[1]) == 5
    with pytest.raises(ConfigError, match="'pop'.*timestamp"):
        bad = cfg_of(tmp_path, {"name": "pop", "kind": "popularity", "log": str(path),
                                "half_life_days": 2.0})
        build_popularity(bad.channels[0], tmp_path / "x")


def test_build_errors_name_the_channel_and_column(tmp_path, log):
    path = log[0]
    cfg = cfg_of(tmp_path, {"name": "cf", "kind": "itemcf", "log": str(path), "user": "uid"})
    with pytest.raises(DataError, match="channel 'cf'.*'uid'"):
        build_itemcf(cfg.channels[0], tmp_path / "o")
    cfg = cfg_of(tmp_path, {"name": "lex", "kind": "bm25", "items": str(tmp_path / "nope.parquet"),
                            "text": ["t"]})
    with pytest.raises(DataError, match="channel 'lex'.*not found"):
        build_bm25(cfg.channels[0], tmp_path / "o")


def test_config_errors_name_channel_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"channel 'cf': recent"):
        validate_channels({"channels": [{"name": "cf", "kind": "itemcf", "log": "x", "recent": 0}]})
    with pytest.raises(ConfigError, match=r"channel 'cf': neighbors: unknown field \(did you mean 'neighbours'"):
        validate_channels({"channels": [{"name": "cf", "kind": "itemcf", "log": "x", "neighbors": 5}]})
    with pytest.raises(ConfigError, match="channel 'x': kind 'vector'"):
        validate_channels({"channels": [{"name": "x", "kind": "vector"}]})
    with pytest.raises(ConfigError, match="unique"):
        validate_channels({"channels": [{"name": "p", "kind": "popularity", "log": "a"}] * 2})
    with pytest.raises(ConfigError, match="quota"):
        validate_channels({"merge": {"quota": "fixed"},
                           "channels": [{"name": "p", "kind": "popularity", "log": "a"}]})
    with pytest.raises(ConfigError, match="isotonic_log"):
        validate_channels({"merge": {"calibration": "isotonic"},
                           "channels": [{"name": "p", "kind": "popularity", "log": "a"}]})
