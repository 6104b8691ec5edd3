"""The MOBIUS recipe (``objective.name: mobius``) for the one training pipeline: validate the
teacher and BRW columns, cache teacher inputs per distinct query and ad, warm up on impressions,
mine bad cases (``MobiusTask``), and record the business weight column in the contract
(``brw_weight``) so that ``twotower index`` folds it into the item vectors.

Resuming rebuilds the teacher, its keys and the calibrated threshold from the run's config and
fitted features (all deterministic); the Trainer restores the task's sampler state."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from twotower.config import RunConfig
from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError
from twotower.features.dataset import EncodedLog, ItemCorpus, LogReader
from twotower.mobius.task import AD_KEY, QUERY_KEY, MobiusTask
from twotower.mobius.teachers import build_teacher, calibrate_threshold, maybe_cached
from twotower.recipes import Prepared, Recipe, register_recipe
from twotower.runs import RunData


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


def teacher_fields(cfg: RunConfig) -> dict[str, str]:
    """The teacher's columns -> the config field that names each."""
    qcol, acol = teacher_columns(cfg)
    if cfg.objective.mobius.teacher == "oracle":
        return {qcol: "objective.mobius.query_key (oracle teacher)",
                acol: "data.item_id (oracle teacher)"}
    return {qcol: f"objective.mobius.query_text ({cfg.objective.mobius.teacher} teacher)",
            acol: f"objective.mobius.ad_text ({cfg.objective.mobius.teacher} teacher)"}


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
        src.require_fields(teacher_fields(cfg))
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


@register_recipe("mobius")
class MobiusRecipe(Recipe):
    def check(self, cfg: RunConfig) -> None:
        check_mobius_config(cfg)

    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        if stream:
            raise ConfigError("objective mobius reads its log into memory (the teacher keys of every "
                              "row); train it without --stream")
        m = cfg.objective.mobius
        teacher, threshold = None, m.threshold
        qcol, acol = teacher_columns(cfg)
        reader = LogReader(cfg.data, data.features,
                           extra_columns=teacher_fields(cfg) if m.bad_cases == "active" else {})
        log = reader.load("train", positives_only=False)
        qk = np.zeros(len(log), dtype=np.int64)
        ak = np.zeros(len(log), dtype=np.int64)
        if m.bad_cases == "active":
            teacher = build_teacher(m)
            q_vals, qk = _keys(log.raw[qcol])
            a_vals, ak = _keys(log.raw[acol])
            teacher.prepare(list(q_vals), list(a_vals))
            if m.low_relevance_share is not None:
                threshold = calibrate_threshold(teacher, len(q_vals), len(a_vals),
                                                m.low_relevance_share, seed=cfg.train.seed)
            teacher = maybe_cached(teacher, len(q_vals), len(a_vals))
        train = KeyedLog(log, qk, ak)
        steps_per_epoch = train.num_batches(cfg.train.batch_size)
        warmup = m.warmup_steps + m.warmup_epochs * steps_per_epoch
        task = MobiusTask(m, teacher, threshold, warmup, cfg.train.seed, cfg.objective.temperature)
        return Prepared(task, train, steps_per_epoch, {"threshold": threshold, "warmup": warmup})

    def contract(self, cfg: RunConfig) -> dict:
        # the index folds this item-table column into the click vectors: cos(q, a) * w
        return {"brw_weight": cfg.objective.mobius.brw_column}

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        m, task = cfg.objective.mobius, prepared.task
        return {"mobius": {
            "teacher": m.teacher if m.bad_cases == "active" else None,
            "threshold": prepared.state["threshold"], "bad_cases": m.bad_cases,
            "warmup_steps": prepared.state["warmup"], "mining_steps": task.mining_steps,
            "bad_cases_total": task.bad_cases_total, "mining_seconds": task.mining_seconds,
            "mining_share_of_training": task.mining_seconds / max(train_seconds, 1e-9),
            "brw_weight": m.brw_column}}
