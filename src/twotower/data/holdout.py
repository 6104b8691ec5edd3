"""Hold out part of one training file for validation and test (``data.holdout``).

A row's side is a pure function of (seed, the row's group value / time / position in the file), so
the split is the same on every read, every epoch, streaming or not, and after a resume:

- ``group_by``: every row of one request (or user) lands on the same side, so a validation request
  is never half-trained on; the side is a keyed BLAKE2 hash of the group value;
- ``time``: the latest rows are held out (train < valid < test in time; rows that share the cut's
  timestamp go to the later side), the honest split for a log that will be served tomorrow;
- neither: row by row, hashed by the row's position in the file.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.readers import TableSource
from twotower.errors import DataError

SIDES = {"train": 0, "valid": 1, "test": 2}


def _unit_of_values(values: pa.Array, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row, equal for equal values (hashed once per distinct value)."""
    enc = pc.dictionary_encode(pc.fill_null(values.cast(pa.string()), "\0null"))
    key = int(seed).to_bytes(8, "little", signed=True)
    distinct = np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=key).digest(), "little") >> 11
         for v in enc.dictionary.to_pylist()), dtype=np.float64, count=len(enc.dictionary))
    idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return distinct[idx] / float(1 << 53) if len(distinct) else np.zeros(len(values))


def _unit_of_rows(start: int, n: int, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row position ``start .. start + n`` (SplitMix64 of the
    position, so any chunking of the file gives the same numbers)."""
    z = np.arange(start, start + n, dtype=np.uint64) + np.uint64(
        (0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _times(column: pa.ChunkedArray | pa.Array, path, name: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        column = column.cast(pa.int64())
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"{path}: time column {name!r} (data.holdout.time) has type {t}, expected "
                        "a number, date or timestamp")
    x = np.asarray(column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
    return x


class Holdout:
    """Assigns each row of the training file to train / valid / test (see the module doc)."""

    def __init__(self, cfg, source: TableSource):
        self.cfg = cfg
        self.path = source.path
        self.column = cfg.group_by or cfg.time
        if self.column is not None:
            field = "data.holdout.group_by" if cfg.group_by else "data.holdout.time"
            source.require_fields({self.column: field})
        self._cuts: tuple[float, float] | None = None
        self._source = source

    def fractions(self, split: str) -> float:
        return {"train": 1.0 - self.cfg.valid - self.cfg.test, "valid": self.cfg.valid,
                "test": self.cfg.test}[split]

    def has(self, split: str) -> bool:
        return self.fractions(split) > 0

    def _time_cuts(self) -> tuple[float, float]:
        """(first valid time, first test time): the quantiles of the time column."""
        if self._cuts is None:
            t = np.concatenate([_times(c[self.column], self.path, self.column)
                                for c in self._source.iter_chunks([self.column])] or [np.zeros(0)])
            t = np.sort(t[np.isfinite(t)])
            if len(t) == 0:
                raise DataError(f"{self.path}: time column {self.column!r} (data.holdout.time) "
                                "has no values")
            at = lambda share: t[min(len(t) - 1, int(len(t) * share))] if share < 1 else np.inf  # noqa: E731
            self._cuts = (at(1.0 - self.cfg.valid - self.cfg.test), at(1.0 - self.cfg.test)
                          if self.cfg.test > 0 else np.inf)
        return self._cuts

    def sides(self, chunk: pa.Table, start: int) -> np.ndarray:
        """int8 [R]: 0 train, 1 valid, 2 test, for rows ``start ..`` of the file."""
        if self.cfg.time is not None:
            valid_from, test_from = self._time_cuts()
            t = _times(chunk[self.column], self.path, self.column)
            t = np.where(np.isfinite(t), t, -np.inf)  # rows without a time train
            return ((t >= valid_from).astype(np.int8) + (t >= test_from).astype(np.int8))
        if self.cfg.group_by is not None:
            u = _unit_of_values(chunk[self.column].combine_chunks(), self.cfg.seed)
        else:
            u = _unit_of_rows(start, chunk.num_rows, self.cfg.seed)
        out = np.zeros(chunk.num_rows, dtype=np.int8)
        out[u < self.cfg.valid + self.cfg.test] = SIDES["valid"]
        out[u < self.cfg.test] = SIDES["test"]
        return out

    def mask(self, chunk: pa.Table, split: str, start: int) -> pa.Array:
        return pa.array(self.sides(chunk, start) == SIDES[split])


def no_validation_warning() -> str:
    """What to tell a user whose run has nothing to validate (and so no early stopping, no
    metrics): the fix is one line of config."""
    return ("warning: this run has no validation split — no early stopping, no metrics. Add "
            "`data.holdout: {valid: 0.1, group_by: <request or user column>}` (or "
            "`time: <timestamp column>`), a data.split_column, or data.valid / data.test files.")
