"""The ``dmtl`` recipe: a multi-task ranker teaches the two-tower its CTR x engagement.

Zhao et al., "Distillation based Multi-task Learning: A Candidate Generation Model for Improving
Reading Duration" (Tencent, 2021).

One ``twotower train`` run: (1) the teacher, ``models.ranker.MultiTaskRanker`` (cross features,
a CTR head and an engagement head), is trained on every training impression — CTR on click /
unclick, engagement on the clicked rows, a duration first divided by the mean duration of its
item-length bucket (the length bias: a long page holds a reader longer whatever its quality) —
or loaded from ``objective.dmtl.teacher``; it is saved in the run folder (``teacher/``,
safetensors + JSON). (2) The student two-tower trains on clicked rows with
``hard_weight x`` the log-Q in-batch softmax plus ``(1 - hard_weight) x`` the distillation of
the teacher's ``log p(click) + w log p(engagement) (+ log value)`` over each row's in-batch
candidates (``objectives.consistency.distillation_loss``).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from twotower.config import DMTLConfig, ObjectiveConfig, RunConfig
from twotower.data.readers import TableSource
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.features.dataset import EncodedLog, ItemCorpus, LogReader, as_tensors
from twotower.features.feature_set import feature_schema
from twotower.models.ranker import MultiTaskRanker
from twotower.objectives.consistency import distillation_loss
from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.losses import in_batch_softmax
from twotower.objectives.negatives import draws, in_batch_candidates
from twotower.objectives.tasks import RetrievalTask
from twotower.recipes import Prepared, Recipe, register_recipe
from twotower.run import FORMAT_VERSION, RunDir, atomic_write_json, read_json_artifact, sha256_file
from twotower.runs import RunData
from twotower.train.checkpoint import load_weights, save_weights
from twotower.types import FieldSpec

log = logging.getLogger("twotower")

TEACHER_DIR = "teacher"
TEACHER_WEIGHTS, TEACHER_META = "ranker.safetensors", "ranker.json"


# ---------------------------------------------------------------- engagement targets
def length_debias(duration: np.ndarray, length: np.ndarray, buckets: int) -> tuple[np.ndarray, dict]:
    """Each duration divided by the mean duration of its length bucket (quantiles of ``length``
    over the given rows): 1 = as long as items of that length usually hold a user. Returns the
    debiased durations and the buckets (edges, means) for the report and the saved teacher."""
    edges = np.unique(np.quantile(length, np.linspace(0, 1, buckets + 1)[1:-1])) if buckets > 1 else np.zeros(0)
    which = np.searchsorted(edges, length, side="right")
    means = np.bincount(which, weights=duration, minlength=len(edges) + 1)
    counts = np.bincount(which, minlength=len(edges) + 1)
    means = np.where(counts > 0, means / np.maximum(counts, 1), 1.0)
    means = np.where(means > 0, means, 1.0)
    return duration / means[which], {"edges": edges.tolist(), "mean_duration": means.tolist()}


def engagement_targets(cfg: DMTLConfig, eng: np.ndarray, length: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Targets in [0, 1] for the engagement head (clicked rows): a binary signal as is; a
    duration debiased by length (when configured), then ``d / (1 + d)`` so that the head's
    ``log sigmoid`` is ``log(d / (1 + d))``, increasing in the debiased duration."""
    info: dict = {}
    if cfg.engagement_kind == "binary":
        bad = ~np.isin(eng, (0.0, 1.0))
        if bad.any():
            raise DataError(f"objective.dmtl.engagement {cfg.engagement!r} is binary but has values "
                            f"other than 0/1 (e.g. {float(eng[bad][0])})")
        return eng.astype(np.float32), info
    if (eng < 0).any():
        raise DataError(f"objective.dmtl.engagement {cfg.engagement!r}: a duration cannot be negative")
    d = eng.astype(np.float64)
    if length is not None:
        d, info = length_debias(d, length.astype(np.float64), cfg.length_buckets)
    else:
        d = d / max(float(d.mean()), 1e-12)
    return (d / (1.0 + d)).astype(np.float32), info


# ---------------------------------------------------------------- the teacher
def build_teacher(schema, cfg: DMTLConfig) -> MultiTaskRanker:
    return MultiTaskRanker(schema, list(cfg.teacher_hidden), cfg.teacher_cross_dim)


def train_teacher(teacher: MultiTaskRanker, log_: EncodedLog, targets: np.ndarray,
                  cfg: DMTLConfig, seed: int, valid: EncodedLog | None = None) -> dict:
    """CTR head: BCE on click over every impression; engagement head: BCE to ``targets`` on the
    clicked rows. Adam, ``teacher_epochs`` passes over the impressions in seeded order."""
    clicked = log_.label > 0
    target = np.zeros(len(log_), np.float32)
    target[clicked] = targets
    opt = torch.optim.Adam(teacher.parameters(), lr=cfg.teacher_lr)
    teacher.train()
    bs = min(cfg.teacher_batch_size, len(log_))
    losses = []
    for epoch in range(cfg.teacher_epochs):
        order = np.random.default_rng([seed, 7919, epoch]).permutation(len(log_))
        for s in range(0, len(order) - bs + 1, bs):
            idx = order[s:s + bs]
            ctr, eng = teacher(as_tensors(log_.query, idx), as_tensors(log_.item, idx))
            y = torch.from_numpy(log_.label[idx])
            c = torch.from_numpy(clicked[idx])
            loss = F.binary_cross_entropy_with_logits(ctr, y)
            if c.any():
                loss = loss + F.binary_cross_entropy_with_logits(eng[c], torch.from_numpy(target[idx])[c])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    teacher.eval()
    report = {"impressions": len(log_), "clicked": int(clicked.sum()), "epochs": cfg.teacher_epochs,
              "final_loss": float(np.mean(losses[-20:])) if losses else None}
    if valid is not None and len(valid):
        report["valid"] = ctr_logloss(teacher, valid)
    return report


@torch.no_grad()
def ctr_logloss(teacher: MultiTaskRanker, log_: EncodedLog, rows: int = 8192) -> dict:
    """The CTR head's log loss on held-out impressions next to the constant click rate's."""
    y = log_.label
    p = torch.cat([torch.sigmoid(teacher(as_tensors(log_.query, slice(s, s + rows)),
                                         as_tensors(log_.item, slice(s, s + rows)))[0])
                   for s in range(0, len(log_), rows)]).double().numpy()
    p = np.clip(p, 1e-7, 1 - 1e-7)
    rate = float(np.clip(y.mean(), 1e-7, 1 - 1e-7))
    ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    base = float(-(y * np.log(rate) + (1 - y) * np.log(1 - rate)).mean())
    return {"ctr_logloss": ll, "constant_logloss": base, "impressions": len(y)}


def save_teacher(teacher: MultiTaskRanker, folder, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(teacher, folder / TEACHER_WEIGHTS)
    atomic_write_json(folder / TEACHER_META, {"format_version": FORMAT_VERSION, **meta})


def load_teacher(path, schema, features_sha256: str) -> tuple[MultiTaskRanker, dict]:
    """A saved teacher (its folder, or a DMTL run folder holding ``teacher/``), refused unless it
    was trained on the same fitted features (its embedding rows are their vocabularies)."""
    from pathlib import Path

    folder = Path(path)
    if (folder / TEACHER_DIR / TEACHER_META).is_file():
        folder = folder / TEACHER_DIR
    meta = read_json_artifact(folder / TEACHER_META, "DMTL teacher",
                              "objective.dmtl.teacher must name a DMTL run folder or its teacher/",
                              format_version=FORMAT_VERSION)
    if meta.get("features_sha256") != features_sha256:
        raise ArtifactError(f"{folder}: the teacher was trained on other fitted features "
                            "(features.json differs from this run's); train it in this run "
                            "(objective.dmtl.teacher: null) or reuse that run's data and features")
    saved = {n: FieldSpec.from_json(s) for n, s in meta["schema"].items()}
    if saved != dict(schema):
        raise ArtifactError(f"{folder}: the teacher's feature schema differs from this run's")
    teacher = MultiTaskRanker(schema, meta["hidden"], meta["cross_dim"])
    load_weights(teacher, folder / TEACHER_WEIGHTS)
    teacher.eval()
    return teacher, meta


# ---------------------------------------------------------------- the student's task
class DMTLTask(RetrievalTask):
    """Hard labels (log-Q in-batch softmax) + soft labels (the teacher over in-batch candidates).

    The teacher is attached by the recipe once trained or loaded (``attach``); it is frozen and
    kept out of the task's state (its weights live in the run's ``teacher/``)."""

    def __init__(self, cfg: ObjectiveConfig, item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, None, item_id, seed)
        self.dmtl = cfg.dmtl
        self.estimator = (FrequencyEstimator(cfg.estimator.num_buckets, cfg.estimator.num_hashes,
                                             cfg.estimator.alpha) if cfg.logq_correction else None)
        self._teacher: list[MultiTaskRanker] = []  # a list: not a submodule, not in checkpoints
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        self.register_buffer("log_value", torch.zeros(0), persistent=False)

    def attach(self, teacher: MultiTaskRanker, log_value: torch.Tensor | None) -> None:
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher[:] = [teacher.eval()]
        if log_value is not None:
            self.log_value = log_value

    @property
    def teacher(self) -> MultiTaskRanker:
        if not self._teacher:
            raise RuntimeError("DMTLTask: no teacher attached (the dmtl recipe attaches it)")
        return self._teacher[0]

    def candidate_columns(self, b: int, device) -> torch.Tensor:
        """[B, M] in-batch columns per row: column 0 the row's own item, then M-1 others drawn
        without replacement (all B columns, own first, when ``candidates`` is None or >= B)."""
        m = self.dmtl.candidates
        rows = torch.arange(b)
        if m is None or m >= b:
            cols = (rows[:, None] + torch.arange(b)[None, :]) % b  # own item first
        else:
            others = torch.rand(b, b - 1, generator=draws(self, self.generator)).argsort(1)[:, :m - 1]  # [B, M-1]
            others = others + (others >= rows[:, None]).long()  # skip the row's own column
            cols = torch.cat([rows[:, None], others], 1)
        return cols.to(device)

    def teacher_scores(self, batch, cols: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher
        device = cols.device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        with torch.no_grad():
            scores = teacher.grid_scores(batch.query, batch.item, cols, self.dmtl.engagement_weight)
            if self.log_value.numel():
                codes = batch.item_ids.clamp(max=self.log_value.numel() - 1)
                scores = scores + self.log_value.to(device)[codes][cols]
        return scores.float()

    def objective_loss(self, model, batch, step, q, i):
        if self.estimator is not None and self.training:  # eval mode: a read-only lookup
            self.estimator.update(batch.item_ids, step)
        ids, log_q = in_batch_candidates(batch.item_ids, self.estimator)
        logits = self.scale(model, model.logits(q, i))  # [B, B]
        hard = in_batch_softmax(logits, ids, log_q, batch.weight,
                                remove_hits=self.cfg.remove_accidental_hits)
        cols = self.candidate_columns(logits.shape[0], logits.device)  # [B, M]
        teacher = self.teacher_scores(batch, cols)
        soft = distillation_loss(logits.gather(1, cols), teacher, self.dmtl.temperature,
                                 weight=batch.weight)
        logs = {"hard": float(hard.detach())}
        if self.dmtl.loss == "kl":
            # KL = cross-entropy - H(teacher): the same gradients, reported as a divergence
            p = F.softmax(teacher / self.dmtl.temperature, 1)
            entropy = -(p * F.log_softmax(teacher / self.dmtl.temperature, 1)).sum(1)
            w = batch.weight
            entropy = entropy.mean() if w is None else (entropy * w).sum() / w.sum().clamp_min(1e-12)
            soft = soft - entropy.detach()
        logs["distill"] = float(soft.detach())
        h = self.dmtl.hard_weight
        return h * hard + (1 - h) * soft, logs


# ---------------------------------------------------------------- the recipe
def item_log_values(cfg: RunConfig, data: RunData, corpus: ItemCorpus) -> torch.Tensor:
    """log(value) per encoded item index from ``objective.dmtl.value_column`` of the item table
    (items without a value: the median)."""
    column = cfg.objective.dmtl.value_column
    src = data.item_table_source()
    src.require_fields({column: "objective.dmtl.value_column"})
    table = src.read([data.features.item_column, column])
    values = table[column]
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"{src.path}: objective.dmtl.value_column {column!r} has type "
                        f"{values.type}, expected a number")
    v = np.asarray(values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
    pos = corpus.positions(table[data.features.item_column])
    ok = (pos >= 0) & np.isfinite(v) & (v > 0)
    if not ok.any():
        raise DataError(f"{src.path}: objective.dmtl.value_column {column!r} has no positive value "
                        "for any corpus item")
    out = np.full(int(corpus.index.max()) + 1, np.log(np.median(v[ok])))
    out[corpus.index[pos[ok]]] = np.log(v[ok])
    return torch.from_numpy(out.astype(np.float32))


@register_recipe("dmtl")
class DMTLRecipe(Recipe):
    def check(self, cfg: RunConfig) -> None:
        d = cfg.objective.dmtl
        if cfg.data.label is None and d.teacher is None:
            raise ConfigError("objective dmtl trains its teacher on click / unclick impressions: "
                              "set data.label (or load a trained teacher: objective.dmtl.teacher)")
        if cfg.objective.in_batch_block is not None:
            raise ConfigError("objective.in_batch_block applies to in_batch_softmax, not dmtl")
        if d.length_column is not None and d.engagement_kind == "binary":
            raise ConfigError("objective.dmtl.length_column debiases a duration: it needs "
                              "engagement_kind: duration")
        if d.candidates is not None and d.candidates > cfg.train.batch_size:
            raise ConfigError(f"objective.dmtl.candidates ({d.candidates}) exceeds "
                              f"train.batch_size ({cfg.train.batch_size}): the candidates are in-batch")
        if d.teacher is not None and not d.teacher.exists():
            raise ConfigError(f"objective.dmtl.teacher: {d.teacher} does not exist")

    def columns(self, cfg: RunConfig) -> dict[str, str]:
        d = cfg.objective.dmtl
        if d.teacher is not None:
            return {}
        return {c: f for c, f in ((d.engagement, "objective.dmtl.engagement"),
                                  (d.length_column, "objective.dmtl.length_column")) if c}

    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        task = DMTLTask(cfg.objective, data.features.item_id, cfg.train.seed)
        train = data.train_source(True, stream)
        num = train.num_batches(cfg.train.batch_size) if isinstance(train, EncodedLog) else None
        log_value = item_log_values(cfg, data, corpus) if cfg.objective.dmtl.value_column else None
        return Prepared(task, train, num, {"cfg": cfg, "data": data, "log_value": log_value})

    def begin(self, prepared: Prepared, run: RunDir, resumed: bool) -> None:
        cfg, data = prepared.state["cfg"], prepared.state["data"]
        d = cfg.objective.dmtl
        schema = feature_schema(data.features, cfg.model.embedding_dim)
        features_sha = sha256_file(run.features)
        own = run.root / TEACHER_DIR
        if resumed and (own / TEACHER_META).is_file():
            teacher, meta = load_teacher(own, schema, features_sha)
            report = {"source": "resumed", **meta.get("report", {})}
        elif d.teacher is not None:
            teacher, meta = load_teacher(d.teacher, schema, features_sha)
            report = {"source": str(d.teacher), **meta.get("report", {})}
            save_teacher(teacher, own, meta)
        else:
            teacher, report = self._train_teacher(cfg, data, schema)
            save_teacher(teacher, own, {"schema": {n: s.to_json() for n, s in schema.items()},
                                        "hidden": list(d.teacher_hidden), "cross_dim": d.teacher_cross_dim,
                                        "features_sha256": features_sha, "report": report,
                                        "engagement": d.engagement, "engagement_kind": d.engagement_kind,
                                        "length_column": d.length_column})
            report = {"source": "trained", **report}
        prepared.task.attach(teacher, prepared.state["log_value"])
        prepared.state["teacher_report"] = report

    def _train_teacher(self, cfg: RunConfig, data: RunData, schema) -> tuple[MultiTaskRanker, dict]:
        d = cfg.objective.dmtl
        asked = {d.engagement: "objective.dmtl.engagement"}
        if d.length_column:
            asked[d.length_column] = "objective.dmtl.length_column"
        reader = LogReader(cfg.data, data.features, extra_columns=asked)
        impressions = reader.load("train", positives_only=False)
        if impressions.label is None:
            raise ConfigError("objective dmtl trains its teacher on click / unclick: set data.label")
        clicked = impressions.label > 0
        if not clicked.any() or clicked.all():
            raise DataError("objective dmtl: the training impressions need both clicks and unclicks "
                            "for the teacher's CTR head")
        eng = _finite(impressions.raw[d.engagement], "objective.dmtl.engagement", d.engagement)[clicked]
        length = (_finite(impressions.raw[d.length_column], "objective.dmtl.length_column",
                          d.length_column)[clicked] if d.length_column else None)
        targets, buckets = engagement_targets(d, eng, length)
        valid = reader.load("valid", positives_only=False) if reader.path("valid") is not None else None
        torch.manual_seed(cfg.train.seed + 1)
        teacher = build_teacher(schema, d)
        report = train_teacher(teacher, impressions, targets, d, cfg.train.seed, valid)
        if buckets:
            report["length_buckets"] = buckets
        log.info("DMTL teacher trained: %s", report)
        return teacher, report

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        d = cfg.objective.dmtl
        return {"dmtl": {"teacher": prepared.state.get("teacher_report"), "loss": d.loss,
                         "hard_weight": d.hard_weight, "temperature": d.temperature,
                         "candidates": d.candidates, "engagement": d.engagement,
                         "value_column": d.value_column}}


def _finite(values: np.ndarray, field: str, column: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{field} {column!r}: expected a numeric column") from None
    if not np.isfinite(x).all():
        raise DataError(f"{field} {column!r}: {int((~np.isfinite(x)).sum())} rows have no value")
    return x
