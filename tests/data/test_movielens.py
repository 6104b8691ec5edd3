"""MovieLens leave-one-out split (BENCHMARK.md §1) on the shared ML-100K copy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.movielens import leave_one_out, prepare_movielens
from twotower.errors import DataError

# the shared data lies beside the checkout (../shared), in CI as here
ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip("ML-100K not available")
    paths = prepare_movielens(ML100K, tmp_path_factory.mktemp("ml"))
    return pq.read_table(paths["interactions"]), pq.read_table(paths["items"])


def test_split_sizes(prepared):
    log, items = prepared
    split = log["split"].to_numpy(zero_copy_only=False)
    assert (split == "train").sum() == 98_114
    assert (split == "valid").sum() == 943
    assert (split == "test").sum() == 943
    assert log.num_rows == 100_000
    assert items.num_rows == 1682
    for col in ("user_id", "item_id", "history", "gender", "age", "occupation", "genres"):
        assert col in log.column_names


def test_histories_are_causal(prepared):
    log, _ = prepared
    user = log["user_id"].to_numpy()
    item = log["item_id"].to_numpy()
    ts = log["timestamp"].to_numpy()
    hist = log["history"].to_pylist()
    # rows are in each user's (timestamp, item id) order
    order = np.lexsort((item, ts, user))
    assert (order == np.arange(len(order))).all()
    rng = np.random.default_rng(0)
    for r in rng.choice(len(user), 2000, replace=False):
        start = np.searchsorted(user, user[r])
        earlier = item[max(start, r - 50):r].tolist()
        assert hist[r] == earlier  # exactly the previous (at most 50) items, most recent last
        assert item[r] not in hist[r] or item[r] in item[start:r]


def test_test_row_is_last_and_valid_second_last(prepared):
    log, _ = prepared
    user = log["user_id"].to_numpy()
    split = log["split"].to_numpy(zero_copy_only=False)
    last = np.concatenate([np.flatnonzero(user[1:] != user[:-1]), [len(user) - 1]])
    assert (split[last] == "test").all()
    assert (split[last - 1] == "valid").all()


def test_ties_broken_by_item_id():
    ratings = pa.table({"user_id": [1, 1, 1, 1], "item_id": [30, 10, 20, 5],
                        "timestamp": [100, 100, 100, 50]})
    log = leave_one_out(ratings)
    assert log["item_id"].to_pylist() == [5, 10, 20, 30]
    assert log["split"].to_pylist() == ["train", "train", "valid", "test"]
    assert log["history"].to_pylist() == [[], [5], [5, 10], [5, 10, 20]]
    # the same input in another row order gives the same output
    again = leave_one_out(ratings.take(pa.array([3, 2, 1, 0])))
    assert again.equals(log)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare_movielens(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens files"):
        prepare_movielens(tmp_path / "empty", tmp_path / "out")
