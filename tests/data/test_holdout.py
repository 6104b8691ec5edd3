"""data.holdout: deterministic validation / test rows from the train file, by group, time or row."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.config import ConfigError, validate_config
from twotower.features.dataset import LogReader
from twotower.features.feature_set import FeatureSet


def write_log(path, n=5000, seed=0):
    rng = np.random.default_rng(seed)
    requests = np.repeat(np.arange(n // 5), 5)
    pq.write_table(pa.table({
        "request_id": [f"r{r}" for r in requests],
        "ts": 1_000 + requests * 3,
        "user_id": rng.integers(0, 50, n),
        "item_id": rng.integers(0, 80, n),
        "click": (rng.random(n) < 0.3).astype(np.int8),
    }), path, row_group_size=700)
    return path


def reader_for(path, holdout, chunk_rows=1000):
    cfg = validate_config({"data": {
        "train": str(path), "item_id": "item_id", "label": "click", "holdout": holdout,
        "chunk_rows": chunk_rows,
        "features": [{"name": "user_id", "side": "query"}, {"name": "item_id", "side": "item"}]}})
    return LogReader(cfg.data, FeatureSet(cfg.data.features, cfg.data.item_id))


def split_rows(reader, split, column):
    return pa.concat_tables(list(reader.chunks(split, [column, "ts"])))


@pytest.mark.parametrize("holdout", [
    {"valid": 0.2, "test": 0.1, "group_by": "request_id"},
    {"valid": 0.2, "test": 0.1, "time": "ts"},
    {"valid": 0.2, "test": 0.1},
], ids=["group", "time", "row"])
def test_holdout_partitions_the_file_deterministically(tmp_path, holdout):
    path = write_log(tmp_path / "log.parquet")
    reader = reader_for(path, holdout)
    parts = {s: split_rows(reader, s, "request_id") for s in ("train", "valid", "test")}
    sizes = {s: t.num_rows for s, t in parts.items()}
    assert sum(sizes.values()) == 5000  # a partition: every row on exactly one side
    assert abs(sizes["valid"] / 5000 - 0.2) < 0.05 and abs(sizes["test"] / 5000 - 0.1) < 0.05, sizes
    # the same rows on every read, whatever the chunk size (streaming epochs, resumes)
    again = reader_for(path, holdout, chunk_rows=333)
    for s in ("valid", "test"):
        assert split_rows(again, s, "request_id").equals(parts[s])
    # another seed, another split (not for time: it has no randomness)
    if "time" not in holdout:
        other = reader_for(path, {**holdout, "seed": 1})
        assert not split_rows(other, "valid", "request_id").equals(parts["valid"])
    if "group_by" in holdout:  # a request never straddles two sides
        sides = [set(parts[s]["request_id"].to_pylist()) for s in parts]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    if "time" in holdout:  # train < valid < test in time
        t = {s: np.asarray(parts[s]["ts"]) for s in parts}
        assert t["train"].max() < t["valid"].min() and t["valid"].max() < t["test"].min()


def test_holdout_config_is_checked(tmp_path):
    base = {"train": "x.parquet", "item_id": "i", "features": [{"name": "u", "side": "query"},
                                                                {"name": "i", "side": "item"}]}
    with pytest.raises(ConfigError, match="valid \\+ test must be between 0 and 1"):
        validate_config({"data": {**base, "holdout": {"valid": 0.6, "test": 0.5}}})
    with pytest.raises(ConfigError, match="group_by or time, not both"):
        validate_config({"data": {**base, "holdout": {"group_by": "a", "time": "b"}}})
    with pytest.raises(ConfigError, match="drop split_column"):
        validate_config({"data": {**base, "split_column": "split", "holdout": {"valid": 0.1}}})


def test_a_missing_holdout_column_names_the_field(tmp_path):
    from twotower.errors import DataError

    path = write_log(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"'session' \(asked for by data.holdout.group_by\)"):
        reader_for(path, {"valid": 0.1, "group_by": "session"}).source("valid")
