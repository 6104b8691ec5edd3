"""Readers: Parquet streamed in row groups, CSV/TSV, and errors naming file and column."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.config import FeatureConfig
from twotower.data.readers import TableSource
from twotower.errors import DataError
from twotower.features.feature_set import FeatureSet


def table(n=1000):
    rng = np.random.default_rng(0)
    return pa.table({"user_id": np.arange(n) % 37, "item_id": rng.integers(0, 50, n),
                     "price": rng.random(n), "title": [f"word{i % 13} other" for i in range(n)]})


def features():
    return FeatureSet([FeatureConfig(name="user_id", side="query"),
                       FeatureConfig(name="item_id", side="item"),
                       FeatureConfig(name="price", side="item", kind="dense")], "item_id")


def test_parquet_streams_row_groups(tmp_path):
    t = table(1000)
    path = tmp_path / "log.parquet"
    pq.write_table(t, path, row_group_size=100)
    src = TableSource(path)
    assert src.num_rows == 1000
    chunks = list(src.iter_chunks(["item_id", "user_id"], chunk_rows=128))
    assert len(chunks) > 1
    assert all(c.num_rows <= 128 for c in chunks)
    got = pa.concat_tables(chunks)
    assert got.column_names == ["item_id", "user_id"]
    assert got["item_id"].to_pylist() == t["item_id"].to_pylist()
    assert got["user_id"].to_pylist() == t["user_id"].to_pylist()


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(tmp_path, suffix, sep):
    t = table(300)
    path = tmp_path / f"log{suffix}"
    lines = [sep.join(t.column_names)] + [
        sep.join(str(v) for v in row) for row in zip(*(t[c].to_pylist() for c in t.column_names))]
    path.write_text("\n".join(lines) + "\n")
    src = TableSource(path)
    assert src.columns == t.column_names
    got = src.read(["item_id", "title"])
    assert got["item_id"].to_pylist() == t["item_id"].to_pylist()
    assert got["title"].to_pylist() == t["title"].to_pylist()
    chunks = list(src.iter_chunks(["item_id"], chunk_rows=50))
    assert sum(c.num_rows for c in chunks) == 300


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TableSource(tmp_path / "nope.parquet")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="x.json"):
        TableSource(tmp_path / "x.json")


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(table(10).drop(["price"]), path)
    src = TableSource(path)
    with pytest.raises(DataError) as e:
        features().check_schema(src.schema, src.path)
    assert str(path) in str(e.value) and "'price'" in str(e.value)
    with pytest.raises(DataError, match="'nope'"):
        list(src.iter_chunks(["item_id", "nope"]))


def test_wrong_column_type_names_file_column_and_expectation(tmp_path):
    t = table(10)
    t = t.set_column(t.column_names.index("price"), "price", pa.array(["cheap"] * 10))
    path = tmp_path / "log.parquet"
    pq.write_table(t, path)
    src = TableSource(path)
    with pytest.raises(DataError) as e:
        features().check_schema(src.schema, src.path)
    msg = str(e.value)
    assert str(path) in msg and "'price'" in msg and "dense" in msg and "a number" in msg


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as e:
        TableSource(empty)
    assert str(empty) in str(e.value) and "empty" in str(e.value)
    header = tmp_path / "header.csv"
    header.write_text("user_id,item_id,price\n")
    with pytest.raises(DataError) as e:
        TableSource(header).read()
    assert str(header) in str(e.value) and "no rows" in str(e.value)
    pq_empty = tmp_path / "empty.parquet"
    pq.write_table(table(0), pq_empty)
    with pytest.raises(DataError, match="no rows"):
        TableSource(pq_empty).read()


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="bad.parquet"):
        TableSource(p)


def test_all_nan_column_is_a_data_error(tmp_path):
    t = table(20)
    t = t.set_column(t.column_names.index("price"), "price", pa.array([float("nan")] * 20))
    fs = features()
    with pytest.raises(DataError) as e:
        fs.fit([t], "log.parquet")
    assert "'price'" in str(e.value) and "log.parquet" in str(e.value)
    t2 = table(20)
    t2 = t2.set_column(t2.column_names.index("user_id"), "user_id", pa.nulls(20, pa.int64()))
    with pytest.raises(DataError, match="'user_id'"):
        features().fit([t2], "log.parquet")


def test_csv_value_of_wrong_type_late_in_file_is_a_data_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("item_id,price\n" + "".join(f"{i},{i}.5\n" for i in range(3000)) + "x,1.0\n")
    src = TableSource(path, csv_block_size=1 << 12)  # types inferred from a small first block
    assert src.schema.field("item_id").type == pa.int64()
    with pytest.raises(DataError) as e:
        src.read()
    assert str(path) in str(e.value) and "'x'" in str(e.value)
    # with the default block size the whole small file is inferred at once: strings, no error
    assert TableSource(path).read()["item_id"].type == pa.string()
