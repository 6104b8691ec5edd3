"""Train a MOBIUS run end to end: validate the teacher/BRW columns, fit features, cache teacher
inputs per distinct query and ad, warm up on impressions, mine bad cases, evaluate, export raw and
BRW-weighted item vectors (``embeddings/items_brw.parquet`` + ``.npy``) and the contract."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from twotower.config import RunConfig, dump_config
from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError
from twotower.eval.offline import encode_corpus, evaluate_requests
from twotower.features.dataset import EncodedLog, LogReader
from twotower.features.feature_set import FeatureSet, feature_schema
from twotower.index.export import write_vectors
from twotower.mobius.brw import brw_item_vectors, lookup_weights
from twotower.mobius.task import AD_KEY, QUERY_KEY, MobiusTask
from twotower.mobius.teachers import build_teacher, calibrate_threshold, maybe_cached
from twotower.models import build_model
from twotower.pipeline import (RunData, RunSummary, _prepare_run_dir, finish_run, load_run_config,
                               save_model)
from twotower.run import RunDir, atomic_write_json, atomic_write_text
from twotower.train.trainer import Trainer, resolve_device, seed_everything


class KeyedLog:
    """An ``EncodedLog`` whose batches carry the teacher keys of each row in ``batch.extra``;
    the batch order is the EncodedLog's (seeded by seed and epoch)."""

    def __init__(self, log: EncodedLog, query_key: np.ndarray, ad_key: np.ndarray):
        self.log, self.query_key, self.ad_key = log, query_key, ad_key

    def __len__(self) -> int:
        return len(self.log)

    def num_batches(self, batch_size: int) -> int:
        return self.log.num_batches(batch_size)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.log))
        for b in range(skip, self.log.num_batches(batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch = self.log.batch(idx)
            batch.extra = {QUERY_KEY: torch.from_numpy(self.query_key[idx]),
                           AD_KEY: torch.from_numpy(self.ad_key[idx])}
            yield batch


def teacher_columns(cfg: RunConfig) -> tuple[str, str]:
    m = cfg.objective.mobius
    if m.teacher == "oracle":
        item_src = next(f.source for f in cfg.data.features if f.name == cfg.data.item_id)
        return m.query_key, item_src
    return m.query_text, m.ad_text


def check_mobius_config(cfg: RunConfig) -> None:
    """Every column the teacher and BRW need exists — checked before any work starts."""
    if cfg.objective.name != "mobius":
        raise ConfigError("objective.name must be 'mobius' for a MOBIUS run")
    if cfg.model.name != "mobius":
        raise ConfigError(f"objective mobius needs model.name: mobius (got {cfg.model.name!r})")
    if cfg.data.label is None:
        raise ConfigError("objective mobius needs data.label (the click column: 1 click, 0 unclick)")
    m = cfg.objective.mobius
    src = TableSource(cfg.data.train)
    if m.bad_cases == "active":
        qcol, acol = teacher_columns(cfg)
        what = "simulator id" if m.teacher == "oracle" else "text"
        missing = [c for c in (qcol, acol) if c not in src.schema.names]
        if missing:
            raise DataError(f"{src.path}: the {m.teacher} teacher needs the {what} column"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                            f"(objective.mobius.query_text / ad_text / query_key); the file has: "
                            f"{', '.join(src.schema.names)}")
    if m.brw_column is not None:
        table_src = TableSource(cfg.data.items) if cfg.data.items is not None else src
        if m.brw_column not in table_src.schema.names:
            raise DataError(f"{table_src.path}: missing BRW column {m.brw_column!r} "
                            "(objective.mobius.brw_column; set it to null to disable BRW); the file "
                            f"has: {', '.join(table_src.schema.names)}")


def _keys(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, key of each row): the teacher caches per distinct value."""
    import pyarrow.compute as pc

    arr = pa.array(values)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.fill_null(arr, "")
        v = np.asarray(arr.to_numpy(zero_copy_only=False)).astype(str)
    else:
        v = np.asarray(arr.to_numpy(zero_copy_only=False))
    uniq, inverse = np.unique(v, return_inverse=True)
    return uniq, inverse.astype(np.int64)


def train_mobius_run(cfg: RunConfig | None = None, overwrite: bool = False, quiet: bool = False,
                     resume_dir: str | Path | None = None) -> RunSummary:
    """Train a MOBIUS run, or resume one (``resume_dir``) from its newest checkpoint: the config
    and the fitted features are read back from the run folder, the teacher, its keys and the
    calibrated threshold are rebuilt from them (all deterministic), and the Trainer restores the
    weights, optimizer, step and the task's sampler state."""
    if resume_dir is not None:
        run = RunDir(resume_dir)
        cfg = load_run_config(run)
        check_mobius_config(cfg)
        features = FeatureSet.load(run.features)
    else:
        if cfg is None:
            raise ConfigError("train_mobius_run needs a config or a run folder to resume")
        check_mobius_config(cfg)
        run = _prepare_run_dir(cfg, overwrite)
        atomic_write_text(run.config, dump_config(cfg))
        features = FeatureSet(cfg.data.features, cfg.data.item_id)
        data = RunData(cfg, features)
        src = data.reader.source("train")
        features.fit(data.reader.chunks("train", features.columns()), src.path)
        features.save(run.features)
    t0 = time.perf_counter()
    m = cfg.objective.mobius
    data = RunData(cfg, features)
    corpus = data.corpus()
    teacher, threshold, qk, ak = None, m.threshold, None, None
    qcol, acol = teacher_columns(cfg)
    reader = LogReader(cfg.data, features, extra_columns=[qcol, acol] if m.bad_cases == "active" else [])
    log = reader.load("train", positives_only=False)
    qk = np.zeros(len(log), dtype=np.int64)
    ak = np.zeros(len(log), dtype=np.int64)
    if m.bad_cases == "active":
        teacher = build_teacher(m)
        q_vals, qk = _keys(log.raw[qcol])
        a_vals, ak = _keys(log.raw[acol])
        teacher.prepare(list(q_vals), list(a_vals))
        if m.low_relevance_share is not None:
            threshold = calibrate_threshold(teacher, len(q_vals), len(a_vals), m.low_relevance_share,
                                            seed=cfg.train.seed)
        teacher = maybe_cached(teacher, len(q_vals), len(a_vals))
    train = KeyedLog(log, qk, ak)
    steps_per_epoch = train.num_batches(cfg.train.batch_size)
    warmup = m.warmup_steps + m.warmup_epochs * steps_per_epoch
    task = MobiusTask(m, teacher, threshold, warmup, cfg.train.seed)
    seed_everything(cfg.train.seed)  # initial weights depend on train.seed only
    model = build_model(cfg.model, feature_schema(features, cfg.model.embedding_dim))
    valid = data.requests("valid", corpus)
    device = resolve_device(cfg.train.device)

    def validate(mod):
        return evaluate_requests(mod, valid, corpus, cfg.eval.ks, cfg.eval.chunk_size, device)

    trainer = Trainer(model, task, cfg.train, run)
    result = trainer.fit(train, validate if valid is not None else None, cfg.eval.metric,
                         resume=resume_dir is not None, num_batches=steps_per_epoch)
    save_model(model, run)
    summary = finish_run(run, cfg, features, model, data, corpus, device)
    summary.train = result
    brw = export_brw(run, cfg, model, features, corpus, device) if m.brw_column else None
    summary.report["train"] = {"steps": result.steps, "epochs": result.epochs_run,
                               "best_epoch": result.best_epoch,
                               "examples_per_second": result.examples_per_second,
                               "seconds": time.perf_counter() - t0}
    summary.report["mobius"] = {
        "teacher": m.teacher if m.bad_cases == "active" else None, "threshold": threshold,
        "bad_cases": m.bad_cases, "warmup_steps": warmup, "mining_steps": task.mining_steps,
        "bad_cases_total": task.bad_cases_total, "mining_seconds": task.mining_seconds,
        "mining_share_of_training": task.mining_seconds / max(result.seconds, 1e-9),
        "brw": brw}
    atomic_write_json(run.report, summary.report)
    return summary


def export_brw(run: RunDir, cfg: RunConfig, model, features: FeatureSet, corpus, device) -> dict:
    """Write ``embeddings/items_brw.{parquet,npy}`` = normalize(click) * w and record it in the
    contract (query side: normalize(click); inner product = cos x w)."""
    m = cfg.objective.mobius
    path = cfg.data.items if cfg.data.items is not None else cfg.data.train
    id_col = features.configs[features.item_id].source
    table = TableSource(path).read([id_col, m.brw_column])
    w = lookup_weights(table, id_col, m.brw_column, corpus.ids, str(path))
    vecs = encode_corpus(model, corpus, device=device)  # [N, D] click vectors
    weighted = brw_item_vectors(vecs.cpu(), torch.from_numpy(np.array(w, dtype=np.float32)))
    files = write_vectors(run.embeddings, "items_brw", corpus.ids, weighted.numpy(), id_col)
    info = {"column": m.brw_column, "files": files, "query": "normalize(click vector)",
            "item": "normalize(click vector) * w", "score": "cos(q, a) * w (inner product)",
            "weight_min": float(w.min()), "weight_max": float(w.max())}
    contract = json.loads(run.contract.read_text())
    contract["brw"] = info
    atomic_write_json(run.contract, contract)
    return info
