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
from twotower.mobius.v2 import REL_KEY, RelevantValidation, resolve_retrieval
from twotower.recipes import Prepared, Recipe, register_recipe
from twotower.runs import RunData


class KeyedLog:
    """An ``EncodedLog`` whose batches carry the teacher keys of each row in ``batch.extra``
    (and, for v2's label cleaning, the teacher relevance of each impression); the batch order is
    the EncodedLog's (seeded by seed and epoch)."""

    def __init__(self, log: EncodedLog, query_key: np.ndarray, ad_key: np.ndarray,
                 relevance: np.ndarray | None = None):
        self.log, self.query_key, self.ad_key, self.relevance = log, query_key, ad_key, relevance

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
            if self.relevance is not None:
                batch.extra[REL_KEY] = torch.from_numpy(self.relevance[idx])
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
    resolve_retrieval(m, cfg.model)
    src = TableSource(cfg.data.train)
    if uses_teacher(m):
        src.require_fields(teacher_fields(cfg))
    if m.brw_column is not None:
        table_src = TableSource(cfg.data.items) if cfg.data.items is not None else src
        if m.brw_column not in table_src.schema.names:
            raise DataError(f"{table_src.path}: missing BRW column {m.brw_column!r} "
                            "(objective.mobius.brw_column; set it to null to disable BRW); the file "
                            f"has: {', '.join(table_src.schema.names)}")


def uses_teacher(m) -> bool:
    """The teacher is needed for active mining and for v2's label cleaning and validation."""
    return m.bad_cases == "active" or (m.mode == "v2" and m.clean_labels != "none")


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
                           extra_columns=teacher_fields(cfg) if uses_teacher(m) else {})
        log = reader.load("train", positives_only=False)
        qk = np.zeros(len(log), dtype=np.int64)
        ak = np.zeros(len(log), dtype=np.int64)
        rel_valid, impression_rel = None, None
        valid = data.requests("valid", corpus) if m.mode == "v2" and uses_teacher(m) else None
        if uses_teacher(m):
            teacher = build_teacher(m)
            q_raw, a_raw = np.asarray(log.raw[qcol]), np.asarray(log.raw[acol])
            vq_raw = ca_raw = None
            if valid is not None:
                # one teacher (one vocabulary / idf, one threshold) over the training pairs, the
                # validation queries and the whole corpus, so v2's validation metric can ask it
                vq_raw = _request_values(data, cfg, valid, qcol)
                ca_raw = _corpus_values(cfg, data.features, corpus, acol)
                q_raw, a_raw = np.concatenate([q_raw, vq_raw]), np.concatenate([a_raw, ca_raw])
            q_vals, q_keys = _keys(q_raw)
            a_vals, a_keys = _keys(a_raw)
            qk, ak = q_keys[:len(log)], a_keys[:len(log)]
            teacher.prepare(list(q_vals), list(a_vals))
            if m.low_relevance_share is not None:
                threshold = calibrate_threshold(teacher, len(q_vals), len(a_vals),
                                                m.low_relevance_share, seed=cfg.train.seed)
            teacher = maybe_cached(teacher, len(q_vals), len(a_vals))
            if m.mode == "v2" and m.clean_labels != "none":
                impression_rel = teacher.score_pairs(torch.from_numpy(qk),
                                                     torch.from_numpy(ak)).numpy()
            if vq_raw is not None:
                rel_valid = _relevant_validation(cfg, data.features, corpus, valid, teacher,
                                                 threshold, q_keys[len(log):],
                                                 a_keys[len(a_keys) - len(ca_raw):])
        train = KeyedLog(log, qk, ak, impression_rel)
        steps_per_epoch = train.num_batches(cfg.train.batch_size)
        warmup = m.warmup_steps + m.warmup_epochs * steps_per_epoch
        task = MobiusTask(m, teacher, threshold, warmup, cfg.train.seed, cfg.objective.temperature,
                          item_id_feature=data.features.item_id)
        return Prepared(task, train, steps_per_epoch, {"threshold": threshold, "warmup": warmup},
                        validation_metrics=rel_valid.metrics if rel_valid is not None else None)

    def contract(self, cfg: RunConfig) -> dict:
        # the index folds this item-table column into the click vectors: cos(q, a) * w
        m = cfg.objective.mobius
        return {"brw_weight": m.brw_column, "brw_alpha": m.brw_alpha, "mobius_mode": m.mode}

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        m, task = cfg.objective.mobius, prepared.task
        return {"mobius": {
            "teacher": m.teacher if uses_teacher(m) else None, "mode": m.mode,
            "clean_labels": m.clean_labels, "item_id_dropout": m.item_id_dropout,
            "retrieval": getattr(cfg.model, "retrieval", None),
            "threshold": prepared.state["threshold"], "bad_cases": m.bad_cases,
            "warmup_steps": prepared.state["warmup"], "mining_steps": task.mining_steps,
            "bad_cases_total": task.bad_cases_total, "mining_seconds": task.mining_seconds,
            "mining_share_of_training": task.mining_seconds / max(train_seconds, 1e-9),
            "brw_weight": m.brw_column}}


def _request_values(data: RunData, cfg: RunConfig, requests, column: str) -> np.ndarray:
    """The ``column`` value of each evaluation request (its first row, as ``build_requests``
    groups them: label > 0 rows, grouped by ``eval.group_by``)."""
    table = data.split_table("valid")
    if cfg.data.label is not None:
        y = np.asarray(table[cfg.data.label].cast(pa.float64()).fill_null(0)
                       .to_numpy(zero_copy_only=False))
        table = table.filter(pa.array(y > 0))
    group = cfg.eval.group_by
    keys = (np.asarray(table[group].to_numpy(zero_copy_only=False)) if group
            else np.arange(table.num_rows))
    uniq, first = np.unique(keys, return_index=True)
    rows = first[np.searchsorted(uniq, requests.keys)]
    return np.asarray(table[column].take(pa.array(rows)).to_numpy(zero_copy_only=False))


def _corpus_values(cfg: RunConfig, features, corpus, column: str) -> np.ndarray:
    """The ``column`` value (the ad text the teacher reads) of each corpus item, in corpus order;
    the oracle teacher reads the item id itself."""
    id_col = features.configs[features.item_id].source
    if column == id_col:
        return np.asarray(corpus.ids.to_numpy(zero_copy_only=False))
    src = TableSource(cfg.data.items if cfg.data.items is not None else cfg.data.train)
    if column not in src.schema.names:
        raise DataError(f"{src.path}: the teacher needs the ad column {column!r} in the item table "
                        f"(objective.mobius.ad_text); the file has: {', '.join(src.schema.names)}")
    table = src.read([id_col, column])
    pos = corpus.positions(table[id_col])
    ok = pos >= 0
    out = np.full(len(corpus), "", dtype=object)  # an item without text scores 0
    text = np.asarray(table[column].fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    out[pos[ok][::-1]] = text[ok][::-1]  # the first row of an id wins
    return out.astype(str)


def _relevant_validation(cfg, features, corpus, valid, teacher, threshold, request_keys,
                         corpus_keys) -> RelevantValidation:
    """v2's model-selection metric: teacher relevance and BRW value of each validation target."""
    t_indptr, t_pos = valid.targets
    t_req = np.repeat(np.arange(len(valid)), np.diff(t_indptr))
    rk, ck = torch.from_numpy(request_keys), torch.from_numpy(corpus_keys)
    target_rel = teacher.score_pairs(rk[t_req], ck[t_pos]).numpy()
    m = cfg.objective.mobius
    value = np.ones(len(corpus))
    if m.brw_column is not None:  # the business weight of each corpus item (first row wins)
        path = cfg.data.items if cfg.data.items is not None else cfg.data.train
        id_col = features.configs[features.item_id].source
        table = TableSource(path).read([id_col, m.brw_column])
        pos = corpus.positions(table[id_col])
        w = np.asarray(table[m.brw_column].cast(pa.float64()).fill_null(0.0)
                       .to_numpy(zero_copy_only=False))
        ok = pos >= 0
        value[pos[ok][::-1]] = w[ok][::-1]

    def pair_rel(req: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return teacher.score_pairs(rk[torch.from_numpy(req)], ck[torch.from_numpy(pos)]).numpy()

    return RelevantValidation(target_rel, value[t_pos], threshold, pair_rel)
