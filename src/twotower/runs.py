"""Open a trained run: ``load_run(path) -> TrainedRun`` (config, features, model, contract, data).

Every stage that works on a trained run (export, index, serve, evaluation, MOBIUS, the CLI) opens
it here, so none reaches up into the orchestration (``pipeline``) for it::

    run = load_run("runs/simulator")
    run.model, run.features, run.contract          # weights loaded, eval mode
    requests = run.data.requests("test", run.corpus())

``RunData`` reads a run's log according to its config (train split, item corpus, evaluation
requests); training uses it too. ``save_model`` / ``load_model`` are the model's persistence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from twotower.config import RunConfig, model_config_class, validate_config
from twotower.data.readers import TableSource
from twotower.errors import ArtifactError, DataError
from twotower.features.dataset import EncodedLog, ItemCorpus, LogReader, StreamingLog, build_corpus
from twotower.features.feature_set import FeatureSet
from twotower.features.requests import EvalRequests, build_requests
from twotower.models import TwoTowerModel, build_model
from twotower.run import FORMAT_VERSION, RunDir, atomic_write_json, read_json_artifact
from twotower.train.checkpoint import load_weights, verify_run_weights
from twotower.types import Batch, FieldSpec, Side


# ---------------------------------------------------------------- model persistence
def save_model(model: TwoTowerModel, run: RunDir) -> None:
    atomic_write_json(run.model_meta, {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.model_dump(mode="json"),
        "schema": {n: s.to_json() for n, s in model.schema.items()},
    })


def load_model(run: RunDir, weights: Path | None = None) -> TwoTowerModel:
    meta = read_json_artifact(run.model_meta, "model metadata", "was this run trained?",
                              format_version=FORMAT_VERSION)
    config_class = model_config_class(meta["model"]["name"])
    fields = dict(meta["model"])
    if "temperature" not in config_class.model_fields:
        fields.pop("temperature", None)  # written before the temperature moved to the objective
    cfg = config_class.model_validate(fields)
    schema = {n: FieldSpec.from_json(s) for n, s in meta["schema"].items()}
    model = build_model(cfg, schema)
    if weights is None:
        verify_run_weights(run)  # flipped bytes can still load: the exported checksum tells
    load_weights(model, weights or run.weights)
    model.eval()
    return model


def eval_columns(cfg: RunConfig) -> dict[str, str]:
    """Columns the evaluation reads besides the features -> the config field naming each."""
    return {c: f for c, f in ((cfg.eval.group_by, "eval.group_by"),
                              (cfg.eval.exclude_seen_by, "eval.exclude_seen_by")) if c}


def load_run_config(run: RunDir) -> RunConfig:
    if not run.config.is_file():
        raise ArtifactError(f"{run.root}: not a run folder (no config.yaml)")
    return validate_config(yaml.safe_load(run.config.read_text()), str(run.config))


def read_contract(run_dir: str | Path) -> dict:
    return read_json_artifact(RunDir(run_dir).contract, "similarity contract",
                              "train or export the run first")


# ---------------------------------------------------------------- data of a run
class RunData:
    """The log of a run, read according to its config: train split, corpus, eval requests."""

    def __init__(self, cfg: RunConfig, features: FeatureSet):
        self.cfg = cfg
        self.features = features
        self.reader = LogReader(cfg.data, features, extra_columns=eval_columns(cfg))

    def train_source(self, positives_only: bool, stream: bool = False) -> EncodedLog | StreamingLog:
        if stream:
            return StreamingLog(self.reader, "train", positives_only)
        return self.reader.load("train", positives_only)

    def validation_batches(self, positives_only: bool, batch_size: int, max_batches: int,
                           seed: int = 0, stream: bool = False) -> list[Batch]:
        """The batches of the validation loss: ``max_batches`` seeded batches of the valid split
        (none without one). Read again without counting into the data report. ``stream``: only
        the split's first ``max_batches * batch_size`` rows are read (bounded memory)."""
        if max_batches <= 0 or self.reader.path("valid") is None:
            return []
        wanted = max_batches * batch_size
        parts, rows = [], 0
        for chunk in self.reader.chunks("valid"):
            part = self.reader.encode_chunk(chunk, positives_only, count=False)
            parts.append(part)
            rows += len(part)
            if stream and rows >= wanted:
                break
        if not rows:
            return []
        return EncodedLog.concat(parts).sample_batches(batch_size, max_batches, seed)

    def item_table_source(self) -> TableSource:
        """The table item attributes are read from: ``data.items``, else the training log."""
        return TableSource(self.cfg.data.items if self.cfg.data.items is not None
                           else self.cfg.data.train)

    def corpus(self) -> ItemCorpus:
        """Items of ``data.items`` when given, else every item that appears in training."""
        if self.cfg.data.items is not None:
            src = TableSource(self.cfg.data.items)
            self.features.check_schema(src.schema, src.path, Side.ITEM)
            tables = list(src.iter_chunks(self.features.columns(Side.ITEM)))
        else:
            tables = [c.select(self.features.columns(Side.ITEM)) for c in self.reader.chunks("train")]
        if not tables:
            raise DataError("the item corpus is empty")
        corpus = build_corpus(tables, self.features)
        if len(corpus) == 0:
            raise DataError("the item corpus has no known item ids")
        return corpus

    def split_table(self, split: str) -> pa.Table | None:
        if self.reader.path(split) is None:
            return None
        chunks = list(self.reader.chunks(split))
        if not chunks:
            return None
        return pa.concat_tables(chunks)

    def seen(self, splits: tuple[str, ...]) -> tuple[np.ndarray, pa.Array] | None:
        """(user key, raw item id) of the positive interactions of ``splits``."""
        by = self.cfg.eval.exclude_seen_by
        if by is None:
            return None
        label, split_col = self.cfg.data.label, self.cfg.data.split_column
        item = self.features.item_column
        keys, items = [], []
        for split in splits:
            columns = [by, item] + ([label] if label else []) + ([split_col] if split_col else [])
            for chunk in self.reader.chunks(split, columns):
                if label:
                    y = np.asarray(chunk[label].cast(pa.float64()).fill_null(0)
                                   .to_numpy(zero_copy_only=False))
                    chunk = chunk.filter(pa.array(y > 0))
                keys.append(np.asarray(chunk[by].to_numpy(zero_copy_only=False)))
                items.append(chunk[item].combine_chunks())
        if not keys:
            return None
        return np.concatenate(keys), pa.concat_arrays(items)

    def requests(self, split: str, corpus: ItemCorpus) -> EvalRequests | None:
        table = self.split_table(split)
        if table is None:
            return None
        prior = {"valid": ("train",), "test": ("train", "valid")}.get(split, ("train",))
        prior = tuple(s for s in prior if self.reader.path(s) is not None)
        return build_requests(table, self.features, corpus, self.cfg.eval.group_by,
                              self.cfg.data.label, self.seen(prior), self.cfg.eval.exclude_seen_by)


# ---------------------------------------------------------------- a trained run
@dataclass
class TrainedRun:
    """A run folder, opened: its config, fitted features and trained model (eval mode)."""

    dir: RunDir
    config: RunConfig
    features: FeatureSet
    model: TwoTowerModel
    _corpus: ItemCorpus | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return self.dir.root

    @cached_property
    def contract(self) -> dict:
        """The similarity contract (``contract.json``)."""
        return read_contract(self.dir.root)

    @cached_property
    def data(self) -> RunData:
        return RunData(self.config, self.features)

    def corpus(self) -> ItemCorpus:
        """The item corpus, read once."""
        if self._corpus is None:
            self._corpus = self.data.corpus()
        return self._corpus

    def requests(self, split: str) -> EvalRequests | None:
        return self.data.requests(split, self.corpus())


def load_run(path: str | Path, weights: Path | None = None) -> TrainedRun:
    """Open the trained run in folder ``path`` (``weights``: another weights file, e.g. a
    checkpoint's); a missing or corrupt artifact is an ArtifactError naming the file."""
    run = RunDir(path)
    cfg = load_run_config(run)
    features = FeatureSet.load(run.features)
    return TrainedRun(run, cfg, features, load_model(run, weights))
