"""Start a run: check every input, read the whole training split, and only then touch the disk.

Order (each step can fail with a message that names the file, column and config field; nothing is
written before the last one):

1. every file the config names exists, is readable and has every column some field asks for
   (features, label, weight, split column, holdout column, eval.group_by / exclude_seen_by, the
   item table, and an objective's own columns: MOBIUS's teacher text and BRW columns);
2. one streaming pass over the training split fits the feature encoders and counts the rows an
   objective will train on (so a corrupt data page, a fractional id, a label a binary objective
   cannot read or a batch larger than the log stop here);
3. the run folder is created. ``--overwrite`` moves the previous run aside first
   (``.NAME.previous``) and puts it back if the new run fails, so a failed overwrite leaves the old
   run exactly as it was; the old copy is deleted only once the new run has finished.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from twotower.config import RunConfig, dump_config
from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError
from twotower.features.dataset import LogReader
from twotower.features.feature_set import FeatureSet
from twotower.run import RunDir, atomic_write_text
from twotower.runs import eval_columns
from twotower.types import Side

#: objectives that read data.label as click (1) / unclick (0) and nothing else
BINARY_LABEL_OBJECTIVES = ("pointwise_bce",)


def trains_on_positives_only(cfg: RunConfig) -> bool:
    """Softmax objectives learn from rows with label > 0 only (every row without a label);
    pointwise BCE and MOBIUS need the unclicked rows too."""
    return cfg.objective.name not in ("pointwise_bce", "mobius")


def check_inputs(cfg: RunConfig, features: FeatureSet,
                 extra_columns: dict[str, str] | None = None) -> LogReader:
    """Step 1: every file and column the config asks for (a DataError / ConfigError naming it)."""
    if cfg.objective.name in BINARY_LABEL_OBJECTIVES + ("mobius",) and cfg.data.label is None:
        raise ConfigError(f"objective {cfg.objective.name} needs data.label (the click column: "
                          "1 click, 0 shown but not clicked)")
    reader = LogReader(cfg.data, features, extra_columns={**eval_columns(cfg), **(extra_columns or {})})
    for split in ("train", "valid", "test"):
        reader.source(split)
    reader.holdout()  # its column and type
    if cfg.data.items is not None:
        items = TableSource(cfg.data.items)
        features.check_schema(items.schema, f"{items.path} (data.items)", Side.ITEM)
    return reader


@dataclass
class TrainingRows:
    """What the pass over the training split counted."""

    rows: int = 0
    positives: int = 0
    label_missing: int = 0
    non_binary: int = 0
    non_binary_example: float | None = None

    def observe(self, label: np.ndarray, binary: bool) -> None:
        self.rows += len(label)
        ok = np.isfinite(label)
        self.label_missing += int((~ok).sum())
        self.positives += int((label[ok] > 0).sum())
        if binary:
            bad = ok & (label != 0) & (label != 1)
            if bad.any():
                self.non_binary += int(bad.sum())
                if self.non_binary_example is None:
                    self.non_binary_example = float(label[bad][0])


def fit_features(cfg: RunConfig, features: FeatureSet, reader: LogReader) -> TrainingRows:
    """Step 2: fit the encoders on the training split in one pass, counting its rows."""
    counts = TrainingRows()
    label = cfg.data.label
    binary = cfg.objective.name in BINARY_LABEL_OBJECTIVES
    src_path = reader.path("train")
    columns = features.columns() + ([label] if label else [])

    def chunks() -> Iterator[pa.Table]:
        for chunk in reader.chunks("train", columns):
            if label:
                col = chunk[label]
                if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                        or pa.types.is_boolean(col.type)):
                    raise DataError(f"{src_path}: label column {label!r} (data.label) has type "
                                    f"{col.type}, expected a number (1 click, 0 unclick)")
                counts.observe(np.asarray(col.cast(pa.float64()).fill_null(np.nan)
                                          .to_numpy(zero_copy_only=False)), binary)
            else:
                counts.rows += chunk.num_rows
            yield chunk

    features.fit(chunks(), src_path)
    _check_counts(cfg, counts, src_path)
    return counts


def _check_counts(cfg: RunConfig, counts: TrainingRows, path) -> None:
    label = cfg.data.label
    if counts.non_binary:
        raise DataError(f"{path}: label column {label!r} (data.label) has {counts.non_binary:,} "
                        f"row{'s' if counts.non_binary > 1 else ''} that are neither 0 nor 1 (e.g. "
                        f"{counts.non_binary_example:g}); objective {cfg.objective.name} reads 1 "
                        "click / 0 unclick: binarise the column (e.g. rating >= 4)")
    if label and counts.label_missing == counts.rows:
        raise DataError(f"{path}: label column {label!r} (data.label) has no values: every row "
                        "is null/NaN")
    labelled = counts.rows - counts.label_missing
    positives_only = label is not None and trains_on_positives_only(cfg)
    usable = counts.positives if positives_only else labelled
    what = (f"rows with {label} > 0 ({cfg.objective.name} trains on positive rows only)"
            if positives_only else "training rows")
    if usable == 0:
        raise DataError(f"{path}: no {what} in the training split")
    if cfg.train.batch_size > usable:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size:,} is larger than the "
                          f"{usable:,} {what}: it would train 0 steps; set train.batch_size to at "
                          f"most {usable:,} (e.g. --set train.batch_size={_power_of_two_below(usable)})")


def _power_of_two_below(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


@dataclass
class StartedRun:
    """A run whose inputs were checked and whose features are fitted, with its folder created."""

    run: RunDir
    features: FeatureSet
    counts: TrainingRows
    previous: Path | None = None  # the run this one overwrites, kept until this one finishes
    warnings: list[str] = field(default_factory=list)

    def finish(self, train: Callable[[], "object"]):
        """``train()``; on success drop the previous run, on failure put it back untouched."""
        try:
            result = train()
        except BaseException:
            self.abort()
            raise
        if self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
        return result

    def abort(self) -> None:
        """Undo an overwrite: the new, unfinished run goes, the previous one comes back. (A fresh
        run's folder stays: its checkpoints let ``--resume`` continue after an interruption.)"""
        if self.previous is not None:
            shutil.rmtree(self.run.root, ignore_errors=True)
            os.replace(self.previous, self.run.root)
            self.previous = None


def start_run(cfg: RunConfig, overwrite: bool = False,
              extra_columns: dict[str, str] | None = None) -> StartedRun:
    """Steps 1-3 (module docstring): check, fit, then create the run folder and write the config
    and the fitted features into it."""
    root = Path(cfg.resolved_run_dir)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"run folder {root} already exists: resume it with "
                          f"`twotower train --resume {root}`, pass --overwrite, or choose "
                          "another name (--set name=...)")
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    reader = check_inputs(cfg, features, extra_columns)
    counts = fit_features(cfg, features, reader)
    previous = None
    if root.exists() and any(root.iterdir()):
        previous = root.with_name(f".{root.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(root, previous)
    run = RunDir(root).ensure()
    started = StartedRun(run, features, counts, previous)
    try:
        atomic_write_text(run.config, dump_config(cfg))
        features.save(run.features)
    except BaseException:
        started.abort()
        raise
    return started
