"""End-to-end runs: fit features -> train -> evaluate -> export, all into one run folder.

The CLI is a thin layer over these functions; so is the Python API a user scripts with::

    from twotower.config import load_config
    from twotower.pipeline import train_run
    summary = train_run(load_config("my.yaml"))
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml

from twotower.config import RunConfig, dump_config, validate_config
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.eval.offline import EvalRequests, build_requests, encode_corpus, evaluate_requests
from twotower.features.dataset import (EncodedLog, ItemCorpus, LogReader, StreamingLog,
                                       build_corpus)
from twotower.features.feature_set import FeatureSet, feature_schema
from twotower.index.export import write_vectors
from twotower.models import TwoTowerModel, build_model
from twotower.models.base import model_config_class
from twotower.objectives.tasks import build_task
from twotower.run import (FORMAT_VERSION, RunDir, atomic_write_json, atomic_write_text,
                          read_json_artifact)
from twotower.data.readers import TableSource
from twotower.towers.embedding import FieldSpec
from twotower.train.checkpoint import load_weights
from twotower.train.trainer import Trainer, TrainResult, resolve_device, seed_everything


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]
    train: TrainResult | None = None
    report: dict[str, Any] = field(default_factory=dict)


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
    cfg = model_config_class(meta["model"]["name"]).model_validate(meta["model"])
    schema = {n: FieldSpec.from_json(s) for n, s in meta["schema"].items()}
    model = build_model(cfg, schema)
    load_weights(model, weights or run.weights)
    model.eval()
    return model


# ---------------------------------------------------------------- data of a run
class RunData:
    """The log of a run, read according to its config: train split, corpus, eval requests."""

    def __init__(self, cfg: RunConfig, features: FeatureSet):
        self.cfg = cfg
        self.features = features
        extra = [c for c in (cfg.eval.exclude_seen_by, cfg.eval.group_by) if c]
        self.reader = LogReader(cfg.data, features, extra_columns=extra)
        self._seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def train_source(self, positives_only: bool, stream: bool = False) -> EncodedLog | StreamingLog:
        if stream:
            return StreamingLog(self.reader, "train", positives_only)
        return self.reader.load("train", positives_only)

    def corpus(self) -> ItemCorpus:
        """Items of ``data.items`` when given, else every item that appears in training."""
        if self.cfg.data.items is not None:
            src = TableSource(self.cfg.data.items)
            from twotower.types import Side

            self.features.check_schema(src.schema, src.path, Side.ITEM)
            tables = list(src.iter_chunks(self.features.columns(Side.ITEM)))
        else:
            from twotower.types import Side

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
        keys, items = [], []
        for split in splits:
            for chunk in self.reader.chunks(split, [by, self.features.configs[self.features.item_id].source]
                                            + ([self.cfg.data.label] if self.cfg.data.label else [])
                                            + ([self.cfg.data.split_column] if self.cfg.data.split_column else [])):
                if self.cfg.data.label:
                    y = np.asarray(chunk[self.cfg.data.label].cast(pa.float64()).fill_null(0)
                                   .to_numpy(zero_copy_only=False))
                    chunk = chunk.filter(pa.array(y > 0))
                keys.append(np.asarray(chunk[by].to_numpy(zero_copy_only=False)))
                items.append(chunk[self.features.configs[self.features.item_id].source].combine_chunks())
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


# ---------------------------------------------------------------- training
def _prepare_run_dir(cfg: RunConfig, overwrite: bool) -> RunDir:
    run = RunDir(cfg.resolved_run_dir)
    if run.root.exists() and any(run.root.iterdir()):
        if not overwrite:
            raise ConfigError(f"run folder {run.root} already exists: resume it with "
                              f"`twotower train --resume {run.root}`, pass --overwrite, or choose "
                              "another name (--set name=...)")
        shutil.rmtree(run.root)
    return run.ensure()


def load_run_config(run: RunDir) -> RunConfig:
    if not run.config.is_file():
        raise ArtifactError(f"{run.root}: not a run folder (no config.yaml)")
    return validate_config(yaml.safe_load(run.config.read_text()), str(run.config))


def train_run(cfg: RunConfig | None = None, resume_dir: str | Path | None = None,
              overwrite: bool = False, stream: bool = False, quiet: bool = False) -> RunSummary:
    """Train (or resume) a run and evaluate it; everything lands in the run folder."""
    if resume_dir is not None:
        run = RunDir(resume_dir)
        cfg = load_run_config(run)
        features = FeatureSet.load(run.features)
    else:
        assert cfg is not None
        features = FeatureSet(cfg.data.features, cfg.data.item_id)
        data = RunData(cfg, features)
        # validate the schemas before anything is written (or an old run replaced)
        src = data.reader.source("train")
        if cfg.data.split_column is None:
            for split in ("valid", "test"):
                data.reader.source(split)
        if cfg.data.items is not None:
            from twotower.types import Side

            items = TableSource(cfg.data.items)
            features.check_schema(items.schema, items.path, Side.ITEM)
        run = _prepare_run_dir(cfg, overwrite)
        atomic_write_text(run.config, dump_config(cfg))
        features.fit(data.reader.chunks("train", features.columns()), src.path)
        features.save(run.features)
    data = RunData(cfg, features)
    t0 = time.perf_counter()
    corpus = data.corpus()
    schema = feature_schema(features, cfg.model.embedding_dim)
    seed_everything(cfg.train.seed)  # initial weights depend on train.seed only
    model = build_model(cfg.model, schema)
    task = build_task(cfg.objective, corpus.features if cfg.objective.uniform_negatives else None,
                      features.item_id, cfg.train.seed)
    train = data.train_source(task.positives_only, stream)
    valid = data.requests("valid", corpus)
    device = resolve_device(cfg.train.device)

    def validate(m: TwoTowerModel) -> dict:
        return evaluate_requests(m, valid, corpus, cfg.eval.ks, cfg.eval.chunk_size, device)

    trainer = Trainer(model, task, cfg.train, run)
    num_batches = train.num_batches(cfg.train.batch_size) if isinstance(train, EncodedLog) else None
    result = trainer.fit(train, validate if valid is not None else None, cfg.eval.metric,
                         resume=resume_dir is not None, num_batches=num_batches)
    save_model(model, run)
    summary = finish_run(run, cfg, features, model, data, corpus, device)
    summary.train = result
    summary.report["train"] = {"steps": result.steps, "epochs": result.epochs_run,
                               "best_epoch": result.best_epoch,
                               "examples_per_second": result.examples_per_second,
                               "seconds": time.perf_counter() - t0}
    atomic_write_json(run.report, summary.report)
    return summary


def finish_run(run: RunDir, cfg: RunConfig, features: FeatureSet, model: TwoTowerModel,
               data: RunData, corpus: ItemCorpus, device) -> RunSummary:
    """Evaluate on the test split (else validation), export embeddings, write the contract."""
    model.to(device)
    item_vecs = encode_corpus(model, corpus, device=device)
    metrics: dict[str, Any] = {}
    for split in ("test", "valid"):
        req = data.requests(split, corpus)
        if req is not None:
            metrics = {"split": split, **evaluate_requests(model, req, corpus, cfg.eval.ks,
                                                           cfg.eval.chunk_size, device, item_vecs)}
            break
    atomic_write_json(run.metrics, metrics)
    export_embeddings(run, model, features, corpus, item_vecs)
    report = {"data": features.report(), "corpus_items": len(corpus)}
    atomic_write_json(run.report, report)
    return RunSummary(run.root, metrics, report=report)


def export_embeddings(run: RunDir, model: TwoTowerModel, features: FeatureSet,
                      corpus: ItemCorpus, item_vecs: torch.Tensor | None = None) -> dict:
    """Item vectors (what the index stores) with their original ids, and the contract."""
    if item_vecs is None:
        item_vecs = encode_corpus(model, corpus)
    files = write_vectors(run.embeddings, "items", corpus.ids, item_vecs.cpu().numpy(),
                          features.configs[features.item_id].source)
    contract = {**model.contract(), "format_version": FORMAT_VERSION, "item_count": len(corpus),
                "item_id": features.configs[features.item_id].source,
                "weights_sha256": _sha256(run.weights) if run.weights.is_file() else None,
                "files": {"items": files}}
    atomic_write_json(run.contract, contract)
    return contract


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_queries(run_dir: str | Path, table_path: str | Path | None = None,
                   split: str = "test") -> dict:
    """Query/user vectors of the requests of ``split`` (or of every row of ``table_path``)."""
    run = RunDir(run_dir)
    cfg = load_run_config(run)
    features = FeatureSet.load(run.features)
    model = load_model(run)
    from twotower.eval.offline import encode_queries
    from twotower.types import Side

    if table_path is not None:
        src = TableSource(table_path)
        features.check_schema(src.schema, src.path, Side.QUERY)
        table = src.read(features.columns(Side.QUERY) + ([cfg.eval.group_by] if cfg.eval.group_by
                                                         and cfg.eval.group_by in src.columns else []))
        key_col = cfg.eval.group_by if cfg.eval.group_by in table.column_names else None
        keys = table[key_col].combine_chunks() if key_col else pa.array(np.arange(table.num_rows))
        query = features.encode(table, Side.QUERY)
    else:
        data = RunData(cfg, features)
        req = data.requests(split, data.corpus())
        if req is None:
            raise DataError(f"the run has no {split!r} split to export queries from")
        keys, query = pa.array(req.keys), req.query
    vecs = encode_queries(model, query)  # [R, Vq, D]
    r, v, d = vecs.shape
    return write_vectors(run.embeddings, "queries", keys, vecs.reshape(r, v * d).numpy(),
                         cfg.eval.group_by or "row")


def export_run(run_dir: str | Path) -> dict:
    """Re-export the item embeddings and contract of a trained run."""
    run = RunDir(run_dir)
    cfg = load_run_config(run)
    features = FeatureSet.load(run.features)
    model = load_model(run)
    corpus = RunData(cfg, features).corpus()
    return export_embeddings(run, model, features, corpus)


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Evaluate a trained run on one split; writes ``metrics.json``."""
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"split {split!r}: expected 'valid' or 'test' (or 'train')")
    run = RunDir(run_dir)
    cfg = load_run_config(run)
    features = FeatureSet.load(run.features)
    model = load_model(run)
    data = RunData(cfg, features)
    corpus = data.corpus()
    req = data.requests(split, corpus)
    if req is None:
        raise DataError(f"the run's config has no {split!r} split to evaluate")
    metrics = {"split": split, **evaluate_requests(model, req, corpus, cfg.eval.ks,
                                                   cfg.eval.chunk_size)}
    metrics["oov"] = features.report()["oov"]
    atomic_write_json(run.metrics, metrics)
    return metrics
