"""The sponsored-search simulator: determinism, schemas, ground truth and the legacy funnel's bias."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.simulator import FILES, SimulatorConfig, SimulatorTruth, load_config, simulate
from twotower.errors import ConfigError, DataError

SMALL = dict(n_users=300, n_queries=400, n_ads=1500, n_advertisers=60, n_impressions=20_000,
             candidates_per_search=20, funnel_log=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(SimulatorConfig(seed=7, **SMALL), tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def log(sim):
    return pq.read_table(sim.impressions_path)


def test_same_seed_same_bytes_other_seed_differs(sim, tmp_path):
    again = simulate(SimulatorConfig(seed=7, **SMALL), tmp_path / "again")
    other = simulate(SimulatorConfig(seed=8, **SMALL), tmp_path / "other")
    for name in FILES.values():
        assert (sim.out_dir / name).read_bytes() == (again.out_dir / name).read_bytes(), name
    assert sim.impressions_path.read_bytes() != other.impressions_path.read_bytes()
    assert not sim.truth.equals(other.truth)
    assert not list(tmp_path.glob("*/.*tmp*")), "temporary files must be renamed away"


def test_schemas(sim, log):
    expected = {
        "impressions": [("search_id", pa.int64()), ("timestamp", pa.int64()), ("split", pa.string()),
                        ("user_id", pa.int64()), ("query_id", pa.int64()),
                        ("query_text", pa.string()), ("ad_id", pa.int64()), ("ad_title", pa.string()),
                        ("ad_category", pa.string()), ("advertiser_id", pa.int64()),
                        ("bid", pa.float64()), ("position", pa.int32()), ("click", pa.int8()),
                        ("dwell", pa.float64()), ("conversion", pa.int8()),
                        ("page_length", pa.float64())],
        "ads": [("ad_id", pa.int64()), ("ad_title", pa.string()), ("ad_category", pa.string()),
                ("advertiser_id", pa.int64()), ("bid", pa.float64())],
        "queries": [("query_id", pa.int64()), ("query_text", pa.string()), ("topic", pa.string())],
        "users": [("user_id", pa.int64()), ("user_segment", pa.string())],
        "funnel": [("search_id", pa.int64()), ("timestamp", pa.int64()), ("split", pa.string()),
                   ("user_id", pa.int64()), ("query_id", pa.int64()), ("ad_id", pa.int64()),
                   ("bid", pa.float64()), ("ranker_score", pa.float64()), ("ranker_rank", pa.int32()),
                   ("shown", pa.bool_()), ("position", pa.int32()), ("click", pa.int8()),
                   ("dwell", pa.float64()), ("conversion", pa.int8())],
    }
    for key, cols in expected.items():
        table = pq.read_table(sim.out_dir / FILES[key])
        assert [(f.name, f.type) for f in table.schema] == cols, key
        assert table.num_rows > 0 and all(table[c].null_count == 0 for c, _ in cols)
    assert log.num_rows == sim.n_impressions == 20_000
    assert set(log["split"].to_pylist()) == {"train", "valid", "test"}
    assert set(log["position"].to_numpy()) == set(range(4))
    ads = pq.read_table(sim.ads_path)
    assert np.array_equal(ads["ad_id"].to_numpy(), np.arange(1500))
    queries = pq.read_table(sim.queries_path)["query_text"].to_pylist()
    assert len(set(queries)) == len(queries) and all(1 <= len(q.split()) <= 5 for q in queries)
    assert all(3 <= len(t.split()) <= 6 for t in ads["ad_title"].to_pylist())
    # the log's denormalised columns agree with the entity tables
    ad_ids = log["ad_id"].to_numpy()
    assert log["ad_title"].to_pylist()[:50] == ads["ad_title"].take(pa.array(ad_ids[:50])).to_pylist()
    assert np.array_equal(log["bid"].to_numpy(), ads["bid"].to_numpy()[ad_ids])
    assert load_config(sim.out_dir) == SimulatorConfig(seed=7, **SMALL)
    assert json.loads(sim.config_path.read_text())["seed"] == 7


def test_truth_round_trip(sim):
    loaded = SimulatorTruth.load(sim.out_dir)
    assert loaded.equals(sim.truth)
    assert loaded.relevance_threshold == 0.5
    with np.load(sim.truth_path, allow_pickle=False) as npz:
        assert {"ad_topic", "ad_attractiveness", "ad_word_ids", "query_topic", "query_word_ids",
                "user_interest", "ctr_coef", "relevance_threshold"} <= set(npz.files)


def test_relevance_range_and_topic_structure(sim):
    truth = sim.truth
    q, a = np.arange(truth.n_queries), np.arange(truth.n_ads)
    rel = truth.relevance_matrix(q, a)
    assert rel.shape == (len(q), len(a)) and rel.min() >= 0.0 and rel.max() <= 1.0
    same = truth.query_topic[:, None] == truth.ad_topic[None, :]
    normal = ~truth.ad_is_clickbait[None, :]
    assert rel[same & normal].mean() > rel[~same].mean() + 0.3
    assert (rel[~same] < truth.relevance_threshold).all()  # other topics are never relevant
    # pairwise and matrix forms agree; broadcasting works
    qq = np.repeat(q[:20], 30)
    aa = np.tile(a[:30], 20)
    assert np.array_equal(truth.relevance(qq, aa), rel[:20, :30].ravel())
    assert np.array_equal(truth.relevance(q[:20, None], a[None, :30]), rel[:20, :30])
    with pytest.raises(DataError):
        truth.relevance([0], [truth.n_ads])


def test_clickbait_high_ctr_at_low_relevance(sim, log):
    truth = sim.truth
    q = np.arange(200)
    users = np.arange(200) % truth.n_users
    rel = truth.relevance_matrix(q, np.arange(truth.n_ads))
    ctr = truth.ctr_matrix(users, q, np.arange(truth.n_ads))
    assert ctr.shape == rel.shape and ((ctr > 0) & (ctr < 1)).all()
    bait = np.broadcast_to(truth.ad_is_clickbait[None, :], rel.shape)
    low = rel < 0.2
    assert ctr[low & bait].mean() > 2 * ctr[low & ~bait].mean()
    # click-bait at low relevance out-clicks normal ads that are relevant
    assert ctr[low & bait].mean() > ctr[(rel >= truth.relevance_threshold) & ~bait].mean()
    # ... so the log holds the bad case: clicks on ads below the relevance threshold
    clicks = log["click"].to_numpy() == 1
    log_rel = truth.relevance(log["query_id"].to_numpy(), log["ad_id"].to_numpy())
    assert (log_rel[clicks] < truth.relevance_threshold).mean() > 0.1
    # true_ctr at position 0 equals the matrix form
    pair = truth.true_ctr(users[:5], q[:5], np.arange(5))
    assert np.allclose(pair, ctr[np.arange(5), np.arange(5)])


def test_selection_bias(sim, log):
    truth = sim.truth
    shown = np.unique(log["ad_id"].to_numpy())
    assert len(shown) / truth.n_ads < 0.5
    # within each query's candidates, the shown ones have the higher legacy score
    cand, score = truth.candidate_ad_ids, truth.candidate_legacy_score
    q = np.unique(log["query_id"].to_numpy())
    pairs = set(zip(log["query_id"].to_numpy().tolist(), log["ad_id"].to_numpy().tolist()))
    was_shown = np.array([[(int(qi), int(a)) in pairs for a in cand[qi]] for qi in q])
    assert score[q][was_shown].mean() > 1.5 * score[q][~was_shown].mean()
    rows = cand[log["query_id"].to_numpy()] == log["ad_id"].to_numpy()[:, None]
    assert rows.any(axis=1).all(), "every shown ad is one of its query's candidates"


def test_click_rate_and_position_bias(sim, log):
    click = log["click"].to_numpy()
    pos = log["position"].to_numpy()
    assert 0.03 < click.mean() < 0.10
    rates = [click[pos == p].mean() for p in range(4)]
    assert rates[0] > rates[-1]


def test_splits_by_time(log):
    split = np.array(log["split"].to_pylist())
    ts = log["timestamp"].to_numpy()
    assert ts[split == "train"].max() < ts[split == "valid"].min()
    assert ts[split == "valid"].max() < ts[split == "test"].min()
    assert 0.07 < (split == "test").mean() < 0.13
    search = log["search_id"].to_numpy()
    assert (np.diff(ts) >= 0).all() and (np.diff(search) >= 0).all()


@pytest.mark.parametrize("bad", [
    dict(n_ads=-5), dict(n_impressions=0), dict(slots=40, candidates_per_search=30),
    dict(candidates_per_search=50, n_ads=20), dict(clickbait_share=1.5), dict(holdout_share=0.6),
    dict(unknown_field=1),
])
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError) as err:
        SimulatorConfig(**bad)
    assert next(iter(bad)) in str(err.value) or "must be" in str(err.value)


def test_missing_truth_is_data_error(tmp_path):
    with pytest.raises(DataError):
        SimulatorTruth.load(tmp_path)


def test_default_world_at_demo_size_is_whole_distinct_searches(tmp_path):
    """The default world (5,000 ads, 3,000 queries) at 100k impressions: exactly that many rows,
    search-major and cut only in the last search, slots 0..3 in order, no ad shown twice in one
    search. (How long it takes is bench/mobius.py's ``simulate_seconds``, not a unit test's.)"""
    cfg = SimulatorConfig(n_impressions=100_000)
    sim = simulate(cfg, tmp_path)
    log = pq.read_table(sim.impressions_path, columns=["search_id", "position", "ad_id"])
    assert log.num_rows == sim.n_impressions == 100_000
    assert sim.n_searches == 100_000 // cfg.slots
    search = log["search_id"].to_numpy()
    position = log["position"].to_numpy()
    ad = log["ad_id"].to_numpy()
    assert (np.diff(search) >= 0).all()
    np.testing.assert_array_equal(position, np.tile(np.arange(cfg.slots), sim.n_searches))
    assert 0 <= ad.min() and ad.max() < cfg.n_ads
    assert len(np.unique(search * cfg.n_ads + ad)) == log.num_rows  # distinct ads per search


def test_funnel_log_ranks_every_candidate_and_shows_the_top_slots(sim, log):
    funnel = pq.read_table(sim.funnel_path).to_pandas()
    per_search = funnel.groupby("search_id")
    assert (per_search.size() == 20).all() and funnel["search_id"].nunique() == sim.n_searches
    ranks = per_search["ranker_rank"].apply(lambda r: sorted(r.tolist()))
    assert all(r == list(range(1, 21)) for r in ranks)
    # the shown rows are exactly the impression log, and they are the ranker's top slots
    shown = funnel[funnel.shown]
    assert len(shown) == log.num_rows
    imp = log.to_pandas()
    merged = shown.merge(imp, on=["search_id", "ad_id"], suffixes=("", "_imp"))
    assert len(merged) == log.num_rows
    assert (merged.position == merged.position_imp).all() and (merged.click == merged.click_imp).all()
    full = per_search["shown"].sum() == 4
    assert (shown[shown.search_id.isin(full[full].index)].ranker_rank <= 4).all()
    top_score = shown.groupby("search_id").ranker_score.min()
    best_unshown = funnel[~funnel.shown].groupby("search_id").ranker_score.max()
    both = top_score.index.intersection(best_unshown.index)
    assert (top_score[both] >= best_unshown[both]).all()
    assert (funnel[~funnel.shown].position == -1).all() and (funnel[~funnel.shown].click == 0).all()


def test_engagement_follows_its_truth(sim, log):
    t = log.to_pandas()
    clicked = t[t.click == 1]
    assert (t[t.click == 0].dwell == 0).all() and (t[t.click == 0].conversion == 0).all()
    assert (clicked.dwell > 0).all()
    truth = sim.truth
    expected = truth.expected_dwell(clicked.user_id.to_numpy(), clicked.query_id.to_numpy(),
                                    clicked.ad_id.to_numpy())
    assert np.corrcoef(np.log(clicked.dwell), np.log(expected))[0, 1] > 0.5
    rel = truth.relevance(clicked.query_id.to_numpy(), clicked.ad_id.to_numpy())
    relevant = rel >= truth.relevance_threshold
    assert clicked.conversion[relevant].mean() > 3 * max(clicked.conversion[~relevant].mean(), 1e-3)
    assert np.allclose(t.page_length, truth.ad_page_length[t.ad_id])


def test_sparse_candidates_equal_the_dense_top_counts():
    """The inverted-index path of large worlds picks, per query, ads with the same shared-word
    counts as the dense product's top C (ties at random), distinct and best first."""
    from twotower.data import simulator as S

    cfg = SimulatorConfig(n_ads=1500, n_queries=400, n_advertisers=60, candidates_per_search=20)
    vocab = S._Vocab.build()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(0).spawn(3)]
    ads, queries = S._make_ads(cfg, vocab, rngs[0]), S._make_queries(cfg, vocab, rngs[1])
    cand, shared = S._lexical_candidates(cfg, vocab, queries["word_ids"], ads["word_ids"], rngs[2],
                                         dense_cells=0)
    v = len(vocab.words)
    counts = S._onehot(queries["word_ids"], v) @ S._onehot(ads["word_ids"], v).T
    assert (cand >= 0).all() and all(len(set(row)) == 20 for row in cand)
    assert np.array_equal(np.take_along_axis(counts, cand, 1).astype(np.int64), shared)
    assert np.array_equal(-np.sort(-counts, axis=1)[:, :20].astype(np.int64), shared)
    assert (np.diff(shared, axis=1) <= 0).all()
    assert (shared[:, -1] == 0).any() and (shared[:, 0] > 0).all()  # both paths of the fill
