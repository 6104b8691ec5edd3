"""Issue 12, data side: no run lost on --overwrite, every bad training input a clear error naming
the file / column / field (never a traceback), nothing silently wrong (fractional ids, NaN or
non-binary labels, a batch larger than the log)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from twotower.cli import app
from twotower.config import dump_config
from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError
from twotower.pipeline import train_run


def folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def clear_error(args) -> str:
    """Run the CLI; assert it failed with one `error:` line and no traceback; return the text."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: ") and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.output


def interactions(n=400, seed=0, **columns) -> pa.Table:
    """A small interaction log: user -> item, click, a text column, two row groups' worth."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    items = (users * 7 + rng.integers(0, 3, n)) % 60
    cols = {"user_id": users, "item_id": items,
            "title": [f"item {i} words {i % 5}" for i in items],
            "click": (rng.random(n) < 0.6).astype(np.int64),
            "split": np.where(np.arange(n) % 10 == 0, "valid", "train")}
    cols.update(columns)
    return pa.table(cols)


def config_for(path: Path, run_dir: Path) -> dict:
    raw = {"name": "t", "run_dir": str(run_dir),
           "data": {"train": str(path), "split_column": "split", "item_id": "item_id",
                    "label": "click",
                    "features": [{"name": "user_id", "side": "query"},
                                 {"name": "item_id", "side": "item"},
                                 {"name": "title", "side": "item", "kind": "text"}]},
           "model": {"embedding_dim": 8, "hidden": [], "output_dim": 8},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "threads": 1},
           "eval": {"ks": [5], "metric": "hr@5"}}
    return raw


def write_config(tmp_path: Path, raw: dict, name="cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


# ---------------------------------------------------------------- --overwrite keeps a good run
def empty_log(path: Path) -> None:
    pq.write_table(interactions().slice(0, 0), path)


def corrupt_data_page(path: Path) -> None:
    """Random bytes over the middle of the user_id column's data (the footer stays readable)."""
    pq.write_table(interactions(), path, row_group_size=200, compression="snappy")
    meta = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start, size = meta.data_page_offset, meta.total_compressed_size
    data = bytearray(path.read_bytes())
    data[start + 4:start + size - 4] = np.random.default_rng(1).bytes(size - 8)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("break_log", [empty_log, corrupt_data_page], ids=["empty", "corrupt-page"])
def test_a_failed_overwrite_leaves_the_previous_run_byte_for_byte(tmp_path, break_log):
    log = tmp_path / "log.parquet"
    pq.write_table(interactions(), log)
    run = tmp_path / "run"
    cfg = write_config(tmp_path, config_for(log, run))
    assert CliRunner().invoke(app, ["train", str(cfg)]).exit_code == 0
    before = folder_digest(run)
    assert "model.safetensors" in before and "metrics.json" in before

    break_log(log)
    out = clear_error(["train", cfg, "--overwrite"])
    assert "log.parquet" in out
    assert folder_digest(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "log.parquet", "run"]


def test_a_successful_overwrite_replaces_the_run(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(interactions(), log)
    run = tmp_path / "run"
    raw = config_for(log, run)
    train_run(validate(raw))
    (run / "stale.txt").write_text("from the old run")
    raw["train"]["lr"] = 0.01
    train_run(validate(raw), overwrite=True)
    assert not (run / "stale.txt").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.01
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def validate(raw):
    from twotower.config import validate_config

    return validate_config(raw)


# ---------------------------------------------------------------- unreadable Parquet
def flipped_byte_in_checksummed_page(path: Path) -> None:
    """A one-byte flip inside the item_id values of a file written with page checksums."""
    pq.write_table(interactions(), path, compression="none", write_page_checksum=True,
                   use_dictionary=False)
    meta = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    pos = meta.data_page_offset + meta.total_compressed_size - 40
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def random_bytes_in_used_column(path: Path) -> None:
    pq.write_table(interactions(), path, compression="snappy")
    meta = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    start, size = meta.data_page_offset, meta.total_compressed_size
    data[start + 2:start + size - 2] = np.random.default_rng(0).bytes(size - 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [flipped_byte_in_checksummed_page, random_bytes_in_used_column],
                         ids=["one-byte-flip", "random-bytes"])
def test_corrupt_parquet_pages_are_a_data_error_naming_file_column_row_group(tmp_path, corrupt):
    log = tmp_path / "log.parquet"
    corrupt(log)
    with pytest.raises(DataError) as err:
        list(TableSource(log).iter_chunks(["user_id", "item_id"]))
    msg = str(err.value)
    assert "log.parquet" in msg and "'item_id'" in msg and "row group 0" in msg, msg
    cfg = write_config(tmp_path, config_for(log, tmp_path / "run"))
    out = clear_error(["train", cfg])
    assert "corrupt Parquet data in column 'item_id'" in out
    assert not (tmp_path / "run").exists()


def test_the_same_column_twice_is_a_clear_error(tmp_path):
    log = tmp_path / "twice.parquet"
    t = interactions()
    pq.write_table(pa.Table.from_arrays(t.columns + [t["user_id"]], names=t.column_names + ["user_id"]),
                   log)
    with pytest.raises(DataError, match=r"twice.parquet: column 'user_id' appears more than once"):
        TableSource(log)
    out = clear_error(["train", write_config(tmp_path, config_for(log, tmp_path / "run"))])
    assert "'user_id' appears more than once" in out


# ---------------------------------------------------------------- silent wrong results
def test_fractional_float_ids_are_refused(tmp_path):
    log = tmp_path / "float_ids.parquet"
    t = interactions()
    users = t["user_id"].to_numpy().astype(np.float64)
    users[7] = 3.7
    pq.write_table(t.set_column(0, "user_id", pa.array(users)), log)
    out = clear_error(["train", write_config(tmp_path, config_for(log, tmp_path / "run"))])
    assert "float_ids.parquet" in out and "'user_id'" in out and "3.7" in out and "fractional" in out
    assert not (tmp_path / "run").exists()
    # whole-number floats (a CSV column with gaps) are still ids
    users[7] = 3.0
    pq.write_table(t.set_column(0, "user_id", pa.array(users)), log)
    train_run(validate(config_for(log, tmp_path / "run")))


def test_nan_labels_are_skipped_and_counted_in_the_report(tmp_path):
    import json

    log = tmp_path / "nan_labels.parquet"
    t = interactions()
    click = t["click"].to_numpy().astype(np.float64)
    click[:25] = np.nan
    pq.write_table(t.set_column(3, "click", pa.array(click)), log)
    raw = config_for(log, tmp_path / "run")
    raw["objective"] = {"name": "pointwise_bce"}
    summary = train_run(validate(raw))
    report = json.loads((summary.run_dir / "report.json").read_text())
    n_nan_train = int(np.isnan(click[t["split"].to_numpy(zero_copy_only=False) == "train"]).sum())
    assert report["data"]["rows_skipped"] == {"label_missing": n_nan_train}
    labelled_train = int(((~np.isnan(click)) & (t["split"].to_numpy(zero_copy_only=False) == "train")).sum())
    assert report["data"]["rows_encoded"] == labelled_train


@pytest.mark.parametrize("bad_label", [2.0, -1.0, 0.5])
def test_labels_outside_0_1_are_refused_for_pointwise_bce(tmp_path, bad_label):
    log = tmp_path / "labels.parquet"
    t = interactions()
    click = t["click"].to_numpy().astype(np.float64)
    click[3] = bad_label
    pq.write_table(t.set_column(3, "click", pa.array(click)), log)
    raw = config_for(log, tmp_path / "run")
    raw["objective"] = {"name": "pointwise_bce"}
    out = clear_error(["train", write_config(tmp_path, raw)])
    assert "'click' (data.label)" in out and f"{bad_label:g}" in out and "pointwise_bce" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("objective", ["in_batch_softmax", "pointwise_bce"])
def test_a_batch_larger_than_the_training_rows_is_refused(tmp_path, objective):
    log = tmp_path / "log.parquet"
    pq.write_table(interactions(), log)
    raw = config_for(log, tmp_path / "run")
    raw["objective"] = {"name": objective}
    raw["train"]["batch_size"] = 4096
    with pytest.raises(ConfigError, match=r"train.batch_size 4,096 is larger than the \d+"):
        train_run(validate(raw))
    assert not (tmp_path / "run").exists()
    out = clear_error(["train", write_config(tmp_path, raw)])
    assert "0 steps" in out and ("positive rows only" in out) == (objective == "in_batch_softmax")
