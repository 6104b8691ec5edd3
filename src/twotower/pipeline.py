"""End-to-end runs: fit features -> train -> evaluate -> export, all into one run folder.

The orchestration: it imports the stages, no stage imports it. The CLI is a thin layer over these
functions; so is the Python API a user scripts with::

    from twotower.config import load_config
    from twotower.pipeline import train_run
    summary = train_run(load_config("my.yaml"))

Every objective trains through the same ``train_run``; what differs between objectives (task,
batches, contract fields, report) comes from the objective's recipe (``twotower.recipes``).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import twotower.consistency  # noqa: F401  (registers the DMTL and LDM recipes)
import twotower.ebr  # noqa: F401  (registers the hard-negatives recipe)
import twotower.mobius  # noqa: F401  (registers the MOBIUS recipe)
from twotower.config import RunConfig
from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError
from twotower.eval.offline import encode_corpus, encode_queries, evaluate_requests
from twotower.features.dataset import ItemCorpus
from twotower.features.feature_set import FeatureSet, feature_schema
from twotower.index.export import write_vectors
from twotower.models import TwoTowerModel, build_model
from twotower.objectives.ssl import SelfSupervisedTask
from twotower.recipes import recipe_for
from twotower.intake import start_run
from twotower.run import FORMAT_VERSION, RunDir, atomic_write_json
from twotower.runs import RunData, load_run, load_run_config, save_model
from twotower.train.distributed import check_config, current_world, data_parallel
from twotower.train.trainer import Trainer, TrainResult, resolve_device, seed_everything
from twotower.types import Side


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]
    train: TrainResult | None = None
    report: dict[str, Any] = field(default_factory=dict)
    primary: bool = True  # False on the ranks of a data-parallel run other than 0 (no export)


# ---------------------------------------------------------------- training
def train_run(cfg: RunConfig | None = None, resume_dir: str | Path | None = None,
              overwrite: bool = False, stream: bool = False) -> RunSummary:
    """Train (or resume) a run of any objective and evaluate it; everything lands in the run
    folder. Resuming reads the config and fitted features back from the folder.

    A fresh run's inputs are all checked and its features fitted before the run folder is
    created (``twotower.intake``); a failed ``overwrite`` leaves the previous run as it was."""
    if resume_dir is not None:
        run = RunDir(resume_dir)
        cfg = load_run_config(run)
        recipe_for(cfg).check(cfg)
        if current_world().distributed:
            check_config(cfg)
        return _train(cfg, run, FeatureSet.load(run.features), True, stream)
    if cfg is None:
        raise ConfigError("train_run needs a config, or a run folder to resume")
    recipe = recipe_for(cfg)
    recipe.check(cfg)
    world = current_world()
    if world.distributed:
        check_config(cfg)
    if not world.is_main:  # under torchrun: rank 0 checks, fits the features, makes the folder
        world.barrier()
        run = RunDir(cfg.resolved_run_dir)
        return _train(cfg, run, FeatureSet.load(run.features), False, stream)
    started = start_run(cfg, overwrite, recipe.columns(cfg))
    world.barrier()
    return started.finish(lambda: _train(cfg, started.run, started.features, False, stream))


def _train(cfg: RunConfig, run: RunDir, features: FeatureSet, resumed: bool,
           stream: bool) -> RunSummary:
    recipe = recipe_for(cfg)
    data = RunData(cfg, features)
    t0 = time.perf_counter()
    corpus = data.corpus()
    schema = feature_schema(features, cfg.model.embedding_dim)
    seed_everything(cfg.train.seed)  # initial weights depend on train.seed only
    model = recipe.build_model(cfg, schema)
    prepared = recipe.prepare(cfg, data, corpus, stream)
    recipe.bind(prepared, model)
    recipe.begin(prepared, run, resumed)
    if cfg.objective.ssl is not None:  # SSL is multi-task with whatever the objective trains
        prepared.task = SelfSupervisedTask(prepared.task, corpus.features, cfg.objective.ssl,
                                           cfg.train.seed)
    world = current_world()
    if world.distributed:  # cross-rank negatives over this rank's shard (train/distributed.py)
        prepared.task, prepared.batches, prepared.num_batches = data_parallel(
            prepared.task, prepared.batches, model, world, cfg.train.batch_size)
    valid = data.requests("valid", corpus)
    warnings = warn_if_no_validation(valid) if world.is_main else []
    device = resolve_device(cfg.train.device)

    def validate(m: TwoTowerModel) -> dict:
        return evaluate_requests(m, valid, corpus, cfg.eval.ks, cfg.eval.chunk_size, device,
                                 extra=prepared.validation_metrics)

    train_cfg = cfg.train if world.is_main else cfg.train.model_copy(update={"progress": False})
    trainer = Trainer(model, prepared.task, train_cfg, run, writes=world.is_main)
    # every rank measures the same batches (the loss is the task's own, on this rank's model)
    valid_batches = data.validation_batches(prepared.task.positives_only, cfg.train.batch_size,
                                            cfg.train.validation_batches, cfg.train.seed, stream)
    result = trainer.fit(prepared.batches, validate if valid is not None else None, cfg.eval.metric,
                         resume=resumed, num_batches=prepared.num_batches,
                         validation_batches=valid_batches)
    examples, seconds = world.sum_and_max(result.examples, result.seconds)  # every rank's rows
    if not world.is_main:  # rank 0 exports and reports
        return RunSummary(run.root, {}, train=result, primary=False)
    save_model(model, run)
    summary = finish_run(run, cfg, features, model, data, corpus, device)
    summary.train = result
    summary.report["train"] = {"steps": result.steps, "epochs": result.epochs_run,
                               "best_epoch": result.best_epoch,
                               "examples_per_second": examples / seconds if seconds > 0
                               else float("nan"), "world_size": world.size,
                               "seconds": time.perf_counter() - t0}
    summary.report.update(recipe.report(cfg, prepared, result.seconds))
    summary.report["warnings"] = warnings
    atomic_write_json(run.report, summary.report)
    return summary


def warn_if_no_validation(valid) -> list[str]:
    """A run without validation requests trains blind: say so on stderr (and in report.json)."""
    if valid is not None:
        return []
    import logging

    from twotower.data.holdout import no_validation_warning

    message = no_validation_warning()
    logging.getLogger("twotower").warning(message)
    return [message]


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
            # the held-out queries are what `twotower index` checks its recall on
            write_query_vectors(run, model, pa.array(req.keys), req.query,
                                cfg.eval.group_by or "row", device)
            break
    atomic_write_json(run.metrics, metrics)
    export_embeddings(run, cfg, model, features, corpus, item_vecs)
    report = {"data": features.report(), "corpus_items": len(corpus)}
    atomic_write_json(run.report, report)
    return RunSummary(run.root, metrics, report=report)


def export_embeddings(run: RunDir, cfg: RunConfig, model: TwoTowerModel, features: FeatureSet,
                      corpus: ItemCorpus, item_vecs: torch.Tensor | None = None) -> dict:
    """Item vectors (what the index stores) with their original ids, and the contract: the
    model's similarity, the objective's temperature and what the recipe adds (a MOBIUS run's
    business weight column)."""
    if item_vecs is None:
        item_vecs = encode_corpus(model, corpus)
    files = write_vectors(run.embeddings, "items", corpus.ids, item_vecs.cpu().numpy(),
                          features.item_column)
    contract = {"temperature": cfg.objective.temperature, **model.contract(),
                **recipe_for(cfg).contract(cfg),
                "format_version": FORMAT_VERSION, "item_count": len(corpus),
                "item_id": features.item_column,
                "weights_sha256": _sha256(run.weights) if run.weights.is_file() else None,
                "files": {"items": files}}
    atomic_write_json(run.contract, contract)
    return contract


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_queries(run_dir: str | Path, table_path: str | Path | None = None,
                   split: str = "test") -> dict:
    """Query/user vectors of the requests of ``split`` (or of every row of ``table_path``)."""
    trained = load_run(run_dir)
    cfg, features = trained.config, trained.features
    if table_path is not None:
        src = TableSource(table_path)
        features.check_schema(src.schema, src.path, Side.QUERY)
        table = src.read(features.columns(Side.QUERY) + ([cfg.eval.group_by] if cfg.eval.group_by
                                                         and cfg.eval.group_by in src.columns else []))
        key_col = cfg.eval.group_by if cfg.eval.group_by in table.column_names else None
        keys = table[key_col].combine_chunks() if key_col else pa.array(np.arange(table.num_rows))
        query = features.encode(table, Side.QUERY)
    else:
        req = trained.requests(split)
        if req is None:
            raise DataError(f"the run has no {split!r} split to export queries from")
        keys, query = pa.array(req.keys), req.query
    return write_query_vectors(trained.dir, trained.model, keys, query, cfg.eval.group_by or "row")


def write_query_vectors(run: RunDir, model: TwoTowerModel, keys: pa.Array, query: dict,
                        key_name: str, device="cpu") -> dict:
    """``embeddings/queries.{parquet,npy}``: the retrieval vectors [R, Vq*D] of encoded requests."""
    vecs = encode_queries(model, query, device=device).cpu()  # [R, Vq, D]
    r, v, d = vecs.shape
    return write_vectors(run.embeddings, "queries", keys, vecs.reshape(r, v * d).numpy(), key_name)


def export_run(run_dir: str | Path) -> dict:
    """Re-export the item embeddings and contract of a trained run."""
    trained = load_run(run_dir)
    return export_embeddings(trained.dir, trained.config, trained.model, trained.features,
                             trained.corpus())


def evaluate_run(run_dir: str | Path, split: str | None = None) -> dict:
    """Evaluate a trained run on one split, or (``split=None``) on each of valid / test that the
    run has; writes ``metrics.json`` (the test split's metrics when there is one, with every
    evaluated split under ``splits``)."""
    if split is not None and split not in ("train", "valid", "test"):
        raise ConfigError(f"split {split!r}: expected 'valid' or 'test' (or 'train')")
    trained = load_run(run_dir)
    cfg = trained.config
    splits = [split] if split is not None else [s for s in ("valid", "test")
                                                if trained.data.reader.path(s) is not None]
    if not splits:
        raise DataError(f"{trained.dir.root}: the run has no valid or test split to evaluate (give "
                        "--split train, or retrain with data.holdout / a split column)")
    corpus = trained.corpus()
    item_vecs = encode_corpus(trained.model, corpus)
    by_split = {}
    for name in splits:
        req = trained.requests(name)
        if req is None:
            raise DataError(f"the run's config has no {name!r} split to evaluate")
        by_split[name] = {"split": name, **evaluate_requests(trained.model, req, corpus, cfg.eval.ks,
                                                             cfg.eval.chunk_size,
                                                             item_vecs=item_vecs)}
    metrics = dict(by_split[splits[-1]])
    if len(by_split) > 1:
        metrics["splits"] = by_split
    metrics["oov"] = trained.features.report()["oov"]
    atomic_write_json(trained.dir.metrics, metrics)
    return metrics
