"""FAISS indexes: ids, BRW folding, multi-vector merge, recall, versions, corrupt/mismatch refusal."""
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.index.ann import (add_items, build_index, load_index, remove_items, save_index)
from twotower.index.exact import exact_search
from twotower.index.export import write_vectors
from twotower.index.run_index import build_run_index
from twotower.serve.retriever import merge_multi_vector


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def low_rank(n, d=32, r=8, seed=0):
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(n, r)) @ rng.normal(size=(r, d)) + 0.1 * rng.normal(size=(n, d)))


def fake_run(tmp_path, n=2000, d=32, contract_extra=None):
    """A run folder with just what indexing needs: contract.json + embeddings/items.parquet."""
    x = low_rank(n, d)
    ids = pa.array([f"ad{i}" for i in range(n)])
    write_vectors(tmp_path / "embeddings", "items", ids, x, "ad_id")
    contract = {"model": "dssm", "metric": "inner_product", "normalized": True, "query_vectors": "all",
                "item_vector": 0, "dim": d, "merge": "max", "weights_sha256": "abc", "item_id": "ad_id",
                **(contract_extra or {})}
    (tmp_path / "contract.json").write_text(json.dumps(contract))
    return x, ids


def test_round_trip_preserves_string_ids(tmp_path):
    x, ids = fake_run(tmp_path)
    vi = build_run_index(tmp_path, "flat")
    loaded = load_index(tmp_path)
    assert loaded.version == vi.version == "v000001" and loaded.count == 2000
    s, lab = loaded.search(x[[5, 77]], 3)
    assert loaded.raw_ids(lab[:, 0]) == ["ad5", "ad77"]
    m = loaded.manifest
    assert m["dim"] == 32 and m["kind"] == "flat" and m["model_sha256"] == "abc"
    assert set(m["files"]) == {"index.faiss", "ids.parquet"}
    assert not [p for p in (tmp_path / "index").iterdir() if p.name.startswith(".")]  # no temp left


def test_brw_equivalence_through_index():
    """MOBIUS BRW: MIPS over normalize(x)*w == exact cos(q, x)*w re-ranking."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16)).astype(np.float32) * rng.uniform(0.5, 3, (3000, 1)).astype(np.float32)
    w = rng.uniform(0.1, 5.0, 3000).astype(np.float32)
    q = unit(rng.normal(size=(20, 16)))
    vi = build_index(x, np.arange(3000) * 7, "flat", weights=w, normalize=True)
    s, lab = vi.search(q, 10)
    exact = (q @ unit(x).T) * w[None]
    want = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_array_equal(np.array(vi.raw_ids(lab)).reshape(20, 10), want * 7)
    np.testing.assert_allclose(s, np.take_along_axis(exact, want, 1), rtol=1e-4, atol=1e-5)


def test_multi_vector_merge_max_and_dedupe():
    scores = np.array([[0.9, 0.5, 0.1, 0.8, 0.7, 0.6]], dtype=np.float32)
    labels = np.array([[3, 1, 2, 1, 3, 4]])  # two query vectors' top-3 lists
    s, lab = merge_multi_vector(scores, labels, 3)
    assert lab.tolist() == [[3, 1, 4]] and np.allclose(s, [[0.9, 0.8, 0.6]])
    # agrees with the exact max-merge search
    items = torch.from_numpy(low_rank(500, 16))
    q = torch.nn.functional.normalize(torch.randn(4, 3, 16), dim=-1)
    vi = build_index(items.numpy(), np.arange(500), "flat")
    s_i, l_i = vi.search(q.reshape(12, 16).numpy(), 20)
    ms, ml = merge_multi_vector(s_i.reshape(4, -1), l_i.reshape(4, -1), 10)
    es, ei = exact_search(q, items, 10)
    np.testing.assert_array_equal(ml, ei.numpy())
    assert len(set(ml[0])) == 10


@pytest.mark.parametrize("kind", ["hnsw", "ivf-flat", "sq8", "fp16"])  # PQ/OPQ training too slow for the suite
def test_ann_recall_vs_exact(kind):
    x = low_rank(2000, 32)
    q = low_rank(50, 32, seed=3)
    params = None if kind == "hnsw" else {"nprobe": 16, "nlist": 16}
    if kind in ("ivf-pq", "opq"):  # small codebooks keep the test fast
        params.update(pq_m=8, pq_bits=4)
    vi = build_index(x, np.arange(2000), kind, params=params)
    _, lab = vi.search(q, 10)
    _, ex = exact_search(torch.from_numpy(q), torch.from_numpy(x), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(lab, ex.numpy())])
    floor = {"ivf-pq": 0.5, "opq": 0.5}.get(kind, 0.85)
    assert recall >= floor, (kind, recall)


def test_add_and_remove_make_new_versions(tmp_path):
    x, ids = fake_run(tmp_path, n=500)
    vi = build_run_index(tmp_path, "hnsw")
    new = remove_items(vi, ["ad3", "ad4"])
    assert new.count == 498 and vi.count == 500
    _, lab = new.search(x[[3]], 5)
    assert "ad3" not in new.raw_ids(lab[0])
    added = add_items(new, x[[3]] * 1.0, ["fresh"])
    save_index(added, tmp_path)
    back = load_index(tmp_path)
    assert back.version == "v000002" and back.manifest["parent"] == "v000001" and back.count == 499
    _, lab = back.search(x[[3]], 1)
    assert back.raw_ids(lab[0]) == ["fresh"]
    with pytest.raises(DataError, match="not in the index"):
        remove_items(back, ["nope"])


def test_corrupt_or_mismatched_index_refused(tmp_path):
    fake_run(tmp_path, n=300)
    vi = build_run_index(tmp_path, "flat")
    f = vi.path / "index.faiss"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_index(tmp_path)
    build_run_index(tmp_path, "flat")
    contract = json.loads((tmp_path / "contract.json").read_text())
    (tmp_path / "contract.json").write_text(json.dumps({**contract, "weights_sha256": "other"}))
    with pytest.raises(ArtifactError, match="weights_sha256"):
        load_index(tmp_path)
    (tmp_path / "contract.json").write_text(json.dumps({**contract, "brw_weight": "bid"}))
    with pytest.raises(ArtifactError, match="brw_weight"):
        load_index(tmp_path)
    (tmp_path / "index" / "v000002" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        load_index(tmp_path, contract=contract)


def test_bad_kind_and_params():
    with pytest.raises(ConfigError, match="kind"):
        build_index(np.ones((10, 4)), np.arange(10), "lsh")
    with pytest.raises(ConfigError, match="efSearch|ef_search|valid"):
        build_index(np.ones((10, 4)), np.arange(10), "flat", params={"nprobe": 3})
    with pytest.raises(DataError, match="unique"):
        build_index(np.ones((3, 4)), [1, 1, 2], "flat")


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(4)
    items = torch.from_numpy(rng.normal(size=(5000, 24)).astype(np.float32))
    q = torch.from_numpy(rng.normal(size=(37, 24)).astype(np.float32))
    s, i = exact_search(q, items, 15, chunk_size=700)
    full = q @ items.T
    ws, wi = full.topk(15, dim=1)
    torch.testing.assert_close(s, ws)
    assert (i == wi).float().mean() > 0.99
    s3, i3 = exact_search(q.reshape(37, 1, 24).repeat(1, 2, 1), items, 5)
    torch.testing.assert_close(s3, ws[:, :5])


@pytest.mark.parametrize("order", ["random", "ascending", "descending"])
def test_pruned_exact_scan_equals_full_topk_whatever_the_item_order(order):
    # the CPU path skips scores under each query's running k-th best; the item order decides how
    # much is skipped (ascending = every chunk improves every query) but never the result
    rng = np.random.default_rng(5)
    items = torch.from_numpy(rng.normal(size=(6000, 16)).astype(np.float32))
    q = torch.from_numpy(rng.normal(size=(23, 16)).astype(np.float32))
    if order != "random":
        key = items @ q.mean(0)
        items = items[key.argsort(descending=order == "descending")]
    want_s, want_i = (q @ items.T).topk(40, dim=1)
    for chunk in (64, 1000, None):
        s, i = exact_search(q, items, 40, chunk_size=chunk)
        torch.testing.assert_close(s, want_s)
        assert torch.equal(i, want_i)
    multi = torch.stack([q, -q], dim=1)  # [B, 2, D]: an item scores by its best query vector
    s, i = exact_search(multi, items, 7, chunk_size=500)
    torch.testing.assert_close(s, torch.maximum(q @ items.T, -q @ items.T).topk(7, dim=1).values)


def test_exact_search_edge_shapes():
    items = torch.randn(50, 8)
    s, i = exact_search(torch.randn(3, 8), items, 80)  # k > N: every item, sorted
    assert s.shape == (3, 50) and bool((s[:, :-1] >= s[:, 1:]).all())
    assert sorted(i[0].tolist()) == list(range(50))
    s, i = exact_search(torch.randn(0, 8), items, 5)
    assert s.shape == (0, 5)
    with pytest.raises(ValueError, match="same D"):
        exact_search(torch.randn(3, 7), items, 5)


def test_flat_kind_answers_like_faiss_flat_after_removals():
    # ``flat`` batches (>= 8 queries) run twotower's exact scan over FAISS's storage: same results
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    vi = build_index(x, [f"a{i}" for i in range(3000)], "flat")
    for _ in range(2):
        s, lab = vi.search(q, 20)
        fs, flab = vi.index.search(q, 20)
        np.testing.assert_allclose(s, fs, rtol=1e-5, atol=1e-5)
        assert (lab == flab).mean() > 0.99
        vi.index.remove_ids(np.arange(0, 3000, 2, dtype=np.int64))  # storage compacts, labels move
    assert set(lab.reshape(-1).tolist()) <= set(range(1, 3000, 2))
