"""The Milvus backend (embedded milvus-lite) behind the index interface: same answers as FAISS."""
import json

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from twotower.errors import ArtifactError, ConfigError  # noqa: E402
from twotower.index.ann import (add_items, build_index, build_milvus_index,  # noqa: E402
                                current_version, load_index, remove_items, save_index)
from twotower.index.milvus import alias_for, check_kind, client  # noqa: E402

CONTRACT = {"metric": "cosine", "normalized": True, "query_vectors": 1, "item_vector": "item",
            "dim": 16, "merge": "max", "weights_sha256": "abc", "brw_weight": None}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 16))
    vecs = (rng.normal(size=(3000, 4)) @ basis + 0.1 * rng.normal(size=(3000, 16))).astype(np.float32)
    ids = pa.array([f"ad{i}" for i in range(len(vecs))])
    weights = rng.lognormal(size=len(vecs)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    return vecs, ids, weights, queries / np.linalg.norm(queries, axis=1, keepdims=True)


@pytest.fixture()
def run(tmp_path):
    (tmp_path / "contract.json").write_text(json.dumps(CONTRACT))
    return tmp_path


def _milvus(data, run, kind, params=None, weights=None):
    vecs, ids, _, _ = data
    return build_milvus_index(vecs, ids, kind, params, weights, True, CONTRACT, None,
                              str(run / "m.db"), alias_for(run))


def test_flat_with_brw_equals_faiss(data, run):
    vecs, ids, weights, q = data
    m = _milvus(data, run, "flat", weights=weights)
    f = build_index(vecs, ids, "flat", weights=weights, normalize=True, contract=CONTRACT)
    (ms, ml), (fs, fl) = m.search(q, 10), f.search(q, 10)
    assert np.array_equal(ml, fl)  # normalize(x) * w folded the same way: cos * w ranking
    assert np.allclose(ms, fs, atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf-flat", "sq8", "hnsw"])
def test_approximate_kinds_find_the_exact_neighbours(data, run, kind):
    vecs, ids, _, q = data
    m = _milvus(data, run, kind, {"nprobe": 16} if kind != "hnsw" else None)
    exact = build_index(vecs, ids, "flat", normalize=True).search(q, 10)[1]
    got = m.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.8, recall


def test_unsupported_kinds_are_refused_by_name(data, run):
    with pytest.raises(ConfigError, match="milvus-lite .* has no PQ"):
        _milvus(data, run, "ivf-pq")
    for kind in ("opq", "fp16"):
        with pytest.raises(ConfigError, match=f"no index type for '{kind}'"):
            check_kind(kind, "http://milvus:19530")
    assert check_kind("ivf-pq", "http://milvus:19530") == "IVF_PQ"  # a server has PQ


def test_versions_add_remove_and_alias_hot_swap(data, run):
    vecs, ids, _, q = data
    v1 = save_index(_milvus(data, run, "flat"), run)
    alias = alias_for(run)
    first = load_index(run)
    top = first.raw_ids(first.search(q[:1], 1)[1])[0]
    c = client(str(run / "m.db"))
    assert c.describe_alias(alias)["collection_name"] == first.manifest["collection"]

    v2 = save_index(remove_items(first, [top]), run)
    second = load_index(run)
    assert current_version(run) == v2 and second.count == len(vecs) - 1
    assert top not in second.raw_ids(second.search(q[:1], 5)[1])
    assert c.describe_alias(alias)["collection_name"] == second.manifest["collection"]
    # the old version still answers as it did (a request in flight keeps its index)
    assert load_index(run, v1).raw_ids(load_index(run, v1).search(q[:1], 1)[1])[0] == top

    new = np.ascontiguousarray(q[:2] * 3)  # two new items pointing where two queries look
    v3 = save_index(add_items(second, new, pa.array(["new0", "new1"])), run)
    third = load_index(run)
    assert current_version(run) == v3 and third.count == len(vecs) + 1
    assert third.raw_ids(third.search(q[:1], 1)[1]) == ["new0"]

    c.release_collection(first.manifest["collection"])
    c.drop_collection(first.manifest["collection"])
    with pytest.raises(ArtifactError, match="is gone"):
        load_index(run, v1)
