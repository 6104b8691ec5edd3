"""Encoded logs and item corpora, and the batches the Trainer consumes.

Features are encoded once per chunk into NumPy columns; a batch is a slice of a shuffled index —
no per-example Python objects, no collate function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from twotower.data.readers import TableSource, filter_split
from twotower.errors import DataError
from twotower.features.feature_set import Encoded, FeatureSet
from twotower.features.weight_expression import WeightExpression, parse_weight_expression
from twotower.types import Batch, Side

SPLIT_NAMES = ("train", "valid", "test")


def as_tensors(enc: Encoded, rows: np.ndarray | slice = slice(None)) -> dict[str, torch.Tensor]:
    """Encoded NumPy columns (the ``rows`` of each) -> tensors a tower takes."""
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in enc.items()}


def _take(enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v[idx]) for k, v in enc.items()}


@dataclass
class EncodedLog:
    """Training rows held in memory as encoded columns."""

    query: Encoded
    item: Encoded
    item_index: np.ndarray  # int64 [R]
    label: np.ndarray | None = None  # float32 [R]
    weight: np.ndarray | None = None  # float32 [R]
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # untouched extra columns

    def __len__(self) -> int:
        return len(self.item_index)

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def select(self, mask: np.ndarray) -> "EncodedLog":
        pick = lambda d: {k: v[mask] for k, v in d.items()}  # noqa: E731
        return EncodedLog(pick(self.query), pick(self.item), self.item_index[mask],
                          None if self.label is None else self.label[mask],
                          None if self.weight is None else self.weight[mask], pick(self.raw))

    def batch(self, idx: np.ndarray) -> Batch:
        return Batch(
            query=_take(self.query, idx), item=_take(self.item, idx),
            item_ids=torch.from_numpy(self.item_index[idx]),
            label=None if self.label is None else torch.from_numpy(self.label[idx]),
            weight=None if self.weight is None else torch.from_numpy(self.weight[idx]),
        )

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0,
                shuffle: bool = True, drop_last: bool = True) -> Iterator[Batch]:
        """Batches of one epoch; the order depends only on (seed, epoch), so a resumed run
        that skips ``skip`` batches sees exactly what the interrupted run would have seen."""
        order = (np.random.default_rng([seed, epoch]).permutation(len(self)) if shuffle
                 else np.arange(len(self)))
        for b in range(skip, self.num_batches(batch_size, drop_last)):
            yield self.batch(order[b * batch_size:(b + 1) * batch_size])

    def sample_batches(self, batch_size: int, max_batches: int, seed: int = 0) -> list[Batch]:
        """At most ``max_batches`` batches of ``batch_size`` rows drawn without replacement
        (seeded: the same rows for the same seed); a log smaller than one batch gives one batch of
        all its rows. The validation loss's batches."""
        if max_batches <= 0 or len(self) == 0:
            return []
        order = np.random.default_rng(seed).permutation(len(self))
        full = min(max_batches, len(self) // batch_size)
        if full == 0:
            return [self.batch(order)]
        return [self.batch(order[b * batch_size:(b + 1) * batch_size]) for b in range(full)]

    @staticmethod
    def concat(parts: list["EncodedLog"]) -> "EncodedLog":
        if len(parts) == 1:
            return parts[0]
        cat = lambda key: {k: np.concatenate([getattr(p, key)[k] for p in parts])  # noqa: E731
                           for k in getattr(parts[0], key)}
        opt = lambda key: None if getattr(parts[0], key) is None else np.concatenate(  # noqa: E731
            [getattr(p, key) for p in parts])
        return EncodedLog(cat("query"), cat("item"), np.concatenate([p.item_index for p in parts]),
                          opt("label"), opt("weight"), cat("raw"))


def _numeric(table: pa.Table, column: str, path, what: str) -> np.ndarray:
    if column not in table.column_names:
        raise DataError(f"{path}: missing {what} column {column!r} (asked for by data.{what}); "
                        "the file has: "
                        f"{', '.join(table.column_names)}")
    col = table[column]
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DataError(f"{path}: {what} column {column!r} (data.{what}) has type {t}, expected a number")
    x = np.asarray(col.cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False))
    bad = ~np.isfinite(x)
    if bad.all():
        raise DataError(f"{path}: {what} column {column!r} has no values: every row is null/NaN")
    return x


class LogReader:
    """Reads one split of the log described by a DataConfig, chunk by chunk.

    ``extra_columns``: more columns to read, as a list or as ``{column: config field that asked
    for it}`` (a missing column's error then names that field).
    """

    def __init__(self, data_cfg, features: FeatureSet,
                 extra_columns: list[str] | dict[str, str] | None = None):
        self.cfg = data_cfg
        self.features = features
        asked = extra_columns if isinstance(extra_columns, dict) else {
            c: "the caller" for c in extra_columns or []}
        self.extra_fields = {c: f for c, f in asked.items() if c}
        self.extra_columns = list(self.extra_fields)
        self._holdout = None

    def holdout(self):
        """The run's ``data.holdout`` splitter (None without one)."""
        if self.cfg.holdout is None:
            return None
        if self._holdout is None:
            from twotower.data.holdout import Holdout

            self._holdout = Holdout(self.cfg.holdout, TableSource(self.cfg.train))
        return self._holdout

    def path(self, split: str):
        if self.cfg.split_column is not None:
            return self.cfg.train
        if self.cfg.holdout is not None:
            share = {"train": 1.0, "valid": self.cfg.holdout.valid, "test": self.cfg.holdout.test}
            return self.cfg.train if share[split] > 0 else None
        return getattr(self.cfg, split)

    def asked_by(self) -> dict[str, str]:
        """Every non-feature column this reader needs -> the config field that asked for it."""
        fields = {self.cfg.label: "data.label", self.cfg.weight: "data.weight",
                  self.cfg.split_column: "data.split_column"}
        if self.cfg.holdout is not None:
            fields[self.cfg.holdout.group_by] = "data.holdout.group_by"
            fields[self.cfg.holdout.time] = "data.holdout.time"
        fields = {c: f for c, f in fields.items() if c}
        return {**self.extra_fields, **fields}

    def source(self, split: str) -> TableSource | None:
        path = self.path(split)
        if path is None:
            return None
        src = TableSource(path)
        self.features.check_schema(src.schema, path)
        src.require_fields(self.asked_by())
        if self.weight_expression is not None:
            parse_weight_expression(self.cfg.weight_expression, src.schema.names)
        return src

    @cached_property
    def weight_expression(self) -> WeightExpression | None:
        """The parsed ``data.weight_expression`` (syntax checked; columns checked per file)."""
        if self.cfg.weight_expression is None:
            return None
        return parse_weight_expression(self.cfg.weight_expression)

    def _weight_columns(self) -> list[str]:
        if self.weight_expression is not None:
            return list(self.weight_expression.columns)
        return [self.cfg.weight] if self.cfg.weight else []

    def columns(self) -> list[str]:
        cols = (self.features.columns() + ([self.cfg.label] if self.cfg.label else [])
                + self._weight_columns())
        if self.cfg.split_column:
            cols.append(self.cfg.split_column)
        return list(dict.fromkeys(cols + self.extra_columns))

    def chunks(self, split: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        src = self.source(split)
        if src is None:
            return
        value = split if self.cfg.split_column else None
        columns = list(columns or self.columns())
        if self.cfg.split_column and self.cfg.split_column not in columns:
            columns.append(self.cfg.split_column)
        holdout = self.holdout()
        if holdout is not None and holdout.column and holdout.column not in columns:
            columns.append(holdout.column)
        start = 0
        for chunk in src.iter_chunks(columns, self.cfg.chunk_rows):
            n = chunk.num_rows
            chunk = filter_split(chunk, self.cfg.split_column, value, src.path)
            if holdout is not None:
                chunk = chunk.filter(holdout.mask(chunk, split, start))
            start += n
            if chunk.num_rows:
                yield chunk

    def encode_chunk(self, chunk: pa.Table, positives_only: bool, count: bool = True) -> EncodedLog:
        """Encode one chunk; ``count=False`` leaves the data report's row, skip and OOV counters
        alone (rows read again, e.g. for the validation loss, are not new rows)."""
        path = self.path("train")
        label = _numeric(chunk, self.cfg.label, path, "label") if self.cfg.label else None
        weight = _numeric(chunk, self.cfg.weight, path, "weight") if self.cfg.weight else None
        if self.weight_expression is not None:
            columns = {c: _numeric(chunk, c, path, "weight_expression") for c in self.weight_expression.columns}
            weight = self.weight_expression.evaluate(columns, chunk.num_rows).astype(np.float32)
        if weight is not None:
            weight = np.where(np.isfinite(weight), weight, 0.0).astype(np.float32)
        if label is not None:
            # a row without a label is neither a click nor an unclick: skipped and counted
            # (report.json data.rows_skipped.label_missing), never read as 0
            keep = np.isfinite(label)
            if not keep.all() and count:
                self.features.skipped["label_missing"] += int((~keep).sum())
            if positives_only:
                keep &= label > 0
            if not keep.all():
                chunk = chunk.filter(pa.array(keep))
                label = label[keep]
                weight = None if weight is None else weight[keep]
            label = label.astype(np.float32)
        enc = self.features.encode(chunk, count=count)  # every feature once: rows counted once
        q = {n: enc[n] for n in self.features.names(Side.QUERY)}
        i = {n: enc[n] for n in self.features.names(Side.ITEM)}
        raw = {c: np.asarray(chunk[c].to_numpy(zero_copy_only=False)) for c in self.extra_columns}
        return EncodedLog(q, i, i[self.features.item_id], label, weight, raw)

    def load(self, split: str, positives_only: bool = False) -> EncodedLog | None:
        """Encode a whole split into memory (None if the config has no such split)."""
        if self.path(split) is None:
            return None
        parts = [self.encode_chunk(c, positives_only) for c in self.chunks(split)]
        if not parts:
            raise DataError(f"{self.path(split)}: no rows for split {split!r}")
        log = EncodedLog.concat(parts)
        if len(log) == 0:
            raise DataError(f"{self.path(split)}: no positive rows for split {split!r}")
        return log


@dataclass
class ItemCorpus:
    """Every retrievable item: raw id, encoded index and encoded item features (one row each)."""

    ids: pa.Array  # raw item ids
    index: np.ndarray  # int64 [N] encoded item ids
    features: Encoded

    def __len__(self) -> int:
        return len(self.index)

    def positions(self, raw_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Corpus row of each raw item id (-1 when the item is not in the corpus)."""
        if isinstance(raw_ids, pa.ChunkedArray):
            raw_ids = raw_ids.combine_chunks()
        elif not isinstance(raw_ids, pa.Array):
            raw_ids = pa.array(np.asarray(raw_ids))
        ids = self.ids
        if raw_ids.type != ids.type:
            try:
                raw_ids = raw_ids.cast(ids.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raw_ids, ids = raw_ids.cast(pa.string()), ids.cast(pa.string())
        pos = pc.index_in(raw_ids, value_set=ids)
        return np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def tensors(self, rows: np.ndarray | slice = slice(None)) -> dict[str, torch.Tensor]:
        return as_tensors(self.features, rows)


def build_corpus(tables: list[pa.Table], features: FeatureSet) -> ItemCorpus:
    """Distinct items of ``tables`` by raw id (first row of each wins; null ids dropped).

    Items whose id is unknown to the vocabulary (never seen in training) stay in the corpus:
    their id embedding is the OOV row, but their other features (title, category...) still
    place them, so new items are retrievable without retraining.
    """
    cols = features.columns(Side.ITEM)
    table = pa.concat_tables([t.select(cols) for t in tables]) if len(tables) > 1 else tables[0].select(cols)
    id_col = table[features.item_column].combine_chunks()
    table = table.filter(pc.is_valid(id_col))
    id_col = table[features.item_column].combine_chunks()
    codes = np.asarray(pc.index_in(id_col, value_set=pc.unique(id_col)).to_numpy(zero_copy_only=False))
    _, first = np.unique(codes, return_index=True)
    first = np.sort(first)
    rows = table.take(pa.array(first))
    enc = features.encode(rows, Side.ITEM, count=False)
    return ItemCorpus(rows[features.item_column].combine_chunks(),
                      enc[features.item_id], enc)



class StreamingLog:
    """A training split read chunk by chunk from disk on every epoch (logs larger than memory).

    Each chunk is encoded, shuffled (seeded by seed, epoch and chunk number) and cut into batches;
    the rows left over at a chunk's end are carried into the next one, so no row is dropped
    except the final partial batch.
    """

    def __init__(self, reader: LogReader, split: str = "train", positives_only: bool = False,
                 keep_chunk: Callable[[int], bool] | None = None):
        self.reader, self.split, self.positives_only = reader, split, positives_only
        self.keep_chunk = keep_chunk  # chunk number -> whether this stream encodes it (a shard)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0,
                shuffle: bool = True) -> Iterator[Batch]:
        carry: EncodedLog | None = None
        produced = 0
        for n, chunk in enumerate(self.reader.chunks(self.split)):
            if self.keep_chunk is not None and not self.keep_chunk(n):
                continue
            log = self.reader.encode_chunk(chunk, self.positives_only)
            log = log if carry is None else EncodedLog.concat([carry, log])
            order = (np.random.default_rng([seed, epoch, n]).permutation(len(log)) if shuffle
                     else np.arange(len(log)))
            full = len(log) // batch_size
            for b in range(full):
                if produced >= skip:
                    yield log.batch(order[b * batch_size:(b + 1) * batch_size])
                produced += 1
            carry = log.select(order[full * batch_size:])
