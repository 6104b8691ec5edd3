"""One typed configuration per run, loaded from YAML and validated at the door.

Each stage receives only its own sub-config (``Trainer(model, task, cfg.train)``). A wrong field is
reported with its dotted path and, for a misspelt name, the closest valid one. Model-specific
fields live in the config class each model registers (``models.register``, kept in
``twotower.registry``), so ``model.name`` selects both the model and the fields it accepts.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from twotower import registry
from twotower.errors import ConfigError, validation_message
from twotower.types import FeatureKind, Side

__all__ = ["FeatureKind"]  # re-exported: configs name feature kinds; the enum lives in types


class StrictModel(BaseModel):
    """Base of every config section: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FeatureConfig(StrictModel):
    """One input column and how it is encoded."""

    name: str = Field(description="feature name (and column name, unless `column` is set)")
    column: str | None = Field(None, description="column to read; default: the feature name")
    side: Side
    kind: FeatureKind = FeatureKind.CATEGORICAL
    embedding_dim: int | None = Field(None, gt=0, description="default: model.embedding_dim")
    min_count: int = Field(1, ge=1, description="rarer values go to the OOV bucket")
    num_buckets: int = Field(2**18, gt=1, description="hash buckets (hashed, text)")
    max_len: int = Field(50, gt=0, description="tokens kept (sequence: the most recent)")
    tokens: list[Literal["word", "char3"]] = Field(default_factory=lambda: ["word"])
    vocab_from: str | None = Field(
        None, description="share the vocabulary and embedding table of another feature "
        "(e.g. a watch history shares the item id's)")

    @property
    def source(self) -> str:
        """The column this feature reads."""
        return self.column or self.name


class HoldoutConfig(StrictModel):
    """Rows of the training file held out for validation / test (``data.holdout``).

    Deterministic by ``seed``: by a group column (every row of one request or user lands on the
    same side), by time (the latest rows are held out), or else row by row.
    """

    valid: float = Field(0.1, ge=0, lt=1, description="share held out for validation")
    test: float = Field(0.0, ge=0, lt=1, description="share held out for the final test")
    group_by: str | None = Field(None, description="column whose rows stay together (e.g. "
                                 "request_id, search_id, user_id)")
    time: str | None = Field(None, description="time column: the latest rows are held out "
                             "(train < valid < test in time)")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "HoldoutConfig":
        if self.valid + self.test <= 0 or self.valid + self.test >= 1:
            raise ValueError(f"valid + test must be between 0 and 1 (got {self.valid} + {self.test})")
        if self.group_by is not None and self.time is not None:
            raise ValueError("give group_by or time, not both")
        return self


class DataConfig(StrictModel):
    """Where the log is and what its columns mean."""

    train: Path
    valid: Path | None = None
    test: Path | None = None
    items: Path | None = Field(None, description="item corpus table; default: items seen in train")
    split_column: str | None = Field(
        None, description="if set, train/valid/test rows are taken from one file by this "
        "column's value ('train', 'valid', 'test')")
    item_id: str = "item_id"
    label: str | None = Field(None, description="click label column (1 click, 0 unclick)")
    weight: str | None = Field(None, description="optional sample-weight column")
    holdout: HoldoutConfig | None = Field(
        None, description="hold out part of the train file for validation/test (instead of "
        "split_column or valid/test files)")
    weight_expression: str | None = Field(
        None, description="sample weight from several objectives, an arithmetic expression over "
        "the log's columns, e.g. '1 + 0.5*log1p(dwell) + 2*conversion' (numbers, column names, "
        "+ - * / **, log1p log exp sqrt abs min max clip; never Python eval)")
    features: list[FeatureConfig]
    chunk_rows: int = Field(262_144, gt=0, description="rows read per chunk when streaming")

    @model_validator(mode="after")
    def _check_features(self) -> "DataConfig":
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"features listed twice: {sorted(dupes)}")
        if self.item_id not in names:
            raise ValueError(f"the item id column {self.item_id!r} must be listed in features "
                             "(side: item)")
        for f in self.features:
            if f.vocab_from is not None and f.vocab_from not in names:
                raise ValueError(f"feature {f.name!r}: vocab_from {f.vocab_from!r} is not a feature")
        if not any(f.side == Side.QUERY for f in self.features):
            raise ValueError("no feature has side: query")
        if self.holdout is not None and (self.split_column or self.valid or self.test):
            raise ValueError("holdout splits the train file itself: drop split_column / valid / "
                             "test, or drop holdout")
        if self.weight is not None and self.weight_expression is not None:
            raise ValueError("set data.weight (a column) or data.weight_expression, not both")
        return self


class ModelConfig(StrictModel):
    """Fields every model shares; a model may register a subclass with more."""

    name: str = "dssm"
    embedding_dim: int = Field(64, gt=0)
    hidden: list[int] = Field(default_factory=lambda: [256])
    output_dim: int = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class FrequencyEstimatorConfig(StrictModel):
    num_buckets: int = Field(2**20, gt=0)
    num_hashes: int = Field(1, gt=0)
    alpha: float = Field(0.01, gt=0, le=1)


class MobiusObjectiveConfig(StrictModel):
    """MOBIUS bad-case loop (objective.name: mobius): teacher, threshold, sampler, BRW."""

    teacher: Literal["lexical", "embedding", "oracle"] = "lexical"
    query_text: str = Field("query_text", description="query text column (lexical/embedding "
                            "teacher); the oracle reads the query id column instead")
    ad_text: str = Field("ad_title", description="ad text column (lexical/embedding teacher)")
    query_key: str = Field("query_id", description="oracle teacher: simulator query id column")
    oracle_data: Path | None = Field(None, description="oracle teacher: simulator output folder "
                                     "(truth.npz); experiments only")
    threshold: float = Field(0.5, ge=0, le=1, description="pairs with teacher relevance below "
                             "this are low-relevance")
    low_relevance_share: float | None = Field(
        None, gt=0, lt=1, description="if set, calibrate the threshold so this share of "
        "cross-joined pairs is low-relevance (overrides threshold)")
    bad_cases: Literal["active", "random", "none"] = Field(
        "active", description="active: teacher + student CTR sampler (the paper); random: "
        "uniform cross-join pairs; none: 2-class click/unclick only")
    ctr_temperature: float = Field(1.0, gt=0, description="sampling weight = ctr^(1/T): 1 = "
                                   "CTR-proportional, < 1 sharper, > 1 flatter")
    max_bad_per_batch: int = Field(2048, gt=0, description="cap on bad cases per cross join "
                                   "(per block with cross_join_block)")
    cross_join_block: int | None = Field(
        None, gt=1, description="rows per cross join: the batch is cut into blocks of this many "
        "rows, each cross joined in itself as a batch of that size would be (cost linear in the "
        "batch, not quadratic); None: the whole batch (Algorithm 1)")
    bad_weight: float = Field(3.0, gt=0, description="loss weight of a bad case")
    warmup_steps: int = Field(20, ge=0, description="steps on impressions only before mining")
    warmup_epochs: int = Field(0, ge=0, description="epochs on impressions only before mining "
                               "(added to warmup_steps)")
    brw_column: str | None = Field("bid", description="business related weight column of the "
                                   "item table (None: no BRW export)")
    # MOBIUS v2 (README, MOBIUS v2): departures from Algorithm 1, each measured on validation.
    # None = the mode's value (MOBIUS_RECIPES): v2's recipe, or Algorithm 1's under mode: paper.
    mode: Literal["paper", "v2"] = Field(
        "v2", description="paper: Algorithm 1 as printed (v2 options keep their paper values); "
        "v2: the recipe measured best on validation (README, MOBIUS v2)")
    clean_labels: Literal["none", "relabel_bad", "downweight"] | None = Field(
        None, description="clicked impressions the teacher calls low-relevance: relabelled bad, "
        "down-weighted (clean_weight) or kept as clicks (none, the paper)")
    clean_weight: float = Field(0.1, ge=0, le=1, description="downweight: loss weight of a "
                                "low-relevance click")
    item_id_dropout: float | None = Field(
        None, ge=0, lt=1, description="share of training rows whose ad id is replaced by the "
        "out-of-vocabulary id, so ads never shown are placed by their text, category, advertiser")
    brw_alpha: float | None = Field(None, ge=0, description="tempered BRW: index vectors "
                                    "normalize(v) * w^alpha (1: the paper's cos x w)")

    @model_validator(mode="after")
    def _mode_values(self) -> "MobiusObjectiveConfig":
        recipe = MOBIUS_RECIPES[self.mode]
        for name, value in recipe.items():
            mine = getattr(self, name)
            if mine is None:
                object.__setattr__(self, name, value)
            elif self.mode == "paper" and mine != value:
                raise ValueError(f"{name}: {mine!r} is a v2 option; mode: paper (Algorithm 1) "
                                 f"needs {value!r} (or set mode: v2)")
        return self


#: the values of the v2 options under each mode (model.retrieval too, see models/mobius.py).
#: v2's defaults move off Algorithm 1's only where bench/mobius.py measured a gain on the
#: VALIDATION searches of the scaled world (1M impressions, 50k ads; v2_choice in
#: bench/results/mobius_v2.json): click-minus-bad retrieval raised relevant@100 and CPM@100; no
#: BRW variant kept relevance (brw_alpha 0: the index weighs every ad 1 — cos x bid^alpha lowered
#: both relevant@100 and CPM@100 there); label cleaning changed nothing with the lexical teacher
#: (no click falls under its threshold) and stays off.
MOBIUS_RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"clean_labels": "none", "item_id_dropout": 0.0, "brw_alpha": 1.0},
    "v2": {"clean_labels": "none", "item_id_dropout": 0.0, "brw_alpha": 0.0},
}
MOBIUS_RETRIEVAL = {"paper": "click", "v2": "click_minus_bad"}


class SSLConfig(StrictModel):
    """Self-supervised item views (Yao et al., CIKM 2021), added to any objective's loss."""

    weight: float = Field(0.1, gt=0, description="loss = retrieval loss + weight x contrastive loss")
    masking: Literal["rfm", "crfm", "cfm"] = Field(
        "cfm", description="rfm: random halves; crfm: complementary halves; cfm: features grouped "
        "by mutual information on the corpus, masked together")
    temperature: float = Field(0.1, gt=0, description="of the contrastive softmax between views")
    batch_size: int = Field(512, gt=1, description="items drawn uniformly from the corpus per step")
    dropout: float = Field(0.1, ge=0, lt=1, description="feature dropout: share of values zeroed")


class HardNegativesConfig(StrictModel):
    """EBR hard negatives (objective.name: hard_negatives; Huang et al., KDD 2020)."""

    window: tuple[int, int] = Field((101, 500), description="offline mining: 1-based rank window "
                                    "of the current model's retrieval (the paper: 101-500)")
    draws: int = Field(2, ge=0, description="offline hard negatives per training row (0: none)")
    margin: float | None = Field(None, description="drop mined items scoring above the row's best "
                                 "positive minus this (likely unlabelled positives)")
    refresh_every: int = Field(1, gt=0, description="re-mine with the current model every N epochs")
    warmup_epochs: int = Field(1, ge=0, description="epochs of plain in-batch softmax before mining")
    online: int = Field(0, ge=0, description="online hard negatives: the hardest in-batch items per row")
    easy_negatives: int | None = Field(None, gt=0, description="in-batch (easy) negatives kept per "
                                       "row, drawn at random (None: all); with `online` this sets "
                                       "the easy:hard ratio")
    group_by: str | None = Field(None, description="column whose rows' items are all positives of "
                                 "each other's queries (never mined); default eval.exclude_seen_by")


class DMTLConfig(StrictModel):
    """DMTL distillation (objective.name: dmtl; Zhao et al., Tencent 2021): a multi-task ranker
    (teacher) trained on impressions, its CTR x engagement distilled into the two-tower."""

    teacher: Path | None = Field(None, description="a trained teacher to load instead of training "
                                 "one: a DMTL run folder (its teacher/) or a teacher folder")
    engagement: str = Field("dwell", description="column of the engagement signal after a click")
    engagement_kind: Literal["duration", "binary"] = Field(
        "duration", description="duration: a time (debiased, squashed to [0, 1)); binary: 0/1 "
        "(e.g. conversion)")
    length_column: str | None = Field(None, description="item length column (e.g. page_length): "
                                      "a duration is divided by the mean duration of its length "
                                      "bucket, so long items do not win by length alone")
    length_buckets: int = Field(10, ge=1, description="quantile buckets of the length column")
    engagement_weight: float = Field(1.0, ge=0, description="teacher score = log p(click) + this "
                                     "x log p(engagement)")
    value_column: str | None = Field(None, description="item column multiplied into the teacher "
                                     "score (an eCPM ranker's bid); read from data.items")
    teacher_epochs: int = Field(2, gt=0)
    teacher_lr: float = Field(3e-3, gt=0)
    teacher_batch_size: int = Field(1024, gt=1)
    teacher_hidden: list[int] = Field(default_factory=lambda: [64])
    teacher_cross_dim: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0, description="of both soft-label distributions")
    loss: Literal["listwise_ce", "kl"] = Field(
        "listwise_ce", description="listwise_ce: cross-entropy to the teacher's distribution; kl: "
        "KL(teacher || student) (same gradients, reported without the teacher's entropy)")
    hard_weight: float = Field(0.5, ge=0, le=1, description="loss = hard_weight x log-Q in-batch "
                               "softmax + (1 - hard_weight) x distillation")
    candidates: int | None = Field(64, gt=1, description="in-batch candidates per row the teacher "
                                   "scores (the row's own item and random others); None: all")


class LDMConfig(StrictModel):
    """Learning the ranker's order from the ranking-stage log (objective.name: ldm; Alibaba)."""

    funnel: Path | None = Field(None, description="ranking-stage log (Parquet/CSV): one row per "
                                "candidate the ranker scored, with request, item id and shown")
    request: str = Field("search_id", description="request column (in the funnel and train log)")
    shown: str = Field("shown", description="boolean column: shown (positive) or auctioned but "
                       "not shown (negative of its request)")
    requests_per_batch: int = Field(64, gt=0, description="funnel requests per training step")
    random_weight: float = Field(1.0, ge=0, description="loss = request softmax (ranker head) + "
                                 "this x log-Q in-batch softmax over clicks (random-negative head)")
    retrieval: Literal["ranker", "random", "mix"] = Field(
        "mix", description="head that retrieves (recorded in the contract, used by index/serve)")
    mix: float = Field(0.5, ge=0, le=1, description="mix: score = mix x ranker head + (1 - mix) x "
                       "random head")


class ObjectiveConfig(StrictModel):
    name: Literal["in_batch_softmax", "mixed_negatives", "full_softmax", "pointwise_bce", "mobius",
                  "hard_negatives", "dmtl", "ldm"] = "in_batch_softmax"
    temperature: float = Field(0.05, gt=0, description="logits = similarity / temperature (the "
                               "model returns similarities; serving records it in the contract)")
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    uniform_negatives: int = Field(0, ge=0, description="mixed negatives: corpus draws per batch")
    in_batch_block: int | None = Field(
        None, gt=1, description="in_batch_softmax: split each batch into blocks of this many rows; "
        "a row's negatives are the other rows of its block (as per-device in-batch negatives in "
        "data-parallel training). The [B, B] score matrix shrinks to B x block, so a large batch "
        "costs per example what a block-sized one does. None: the whole batch")
    estimator: FrequencyEstimatorConfig = Field(default_factory=FrequencyEstimatorConfig)
    mobius: MobiusObjectiveConfig = Field(default_factory=MobiusObjectiveConfig)
    hard_negatives: HardNegativesConfig = Field(default_factory=HardNegativesConfig)
    dmtl: DMTLConfig = Field(default_factory=DMTLConfig)
    ldm: LDMConfig = Field(default_factory=LDMConfig)
    ssl: SSLConfig | None = Field(None, description="add the SSL contrastive loss over "
                                  "feature-masked views of corpus items (any objective)")


class TrainConfig(StrictModel):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(1024, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(1000, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0)
    progress: bool = True
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    validation_batches: int = Field(
        8, ge=0, description="batches of the validation split whose loss is logged after every "
        "epoch (metrics.jsonl valid.loss), seeded, the same batches each epoch; 0: no validation loss")


class EvalConfig(StrictModel):
    ks: list[int] = Field(default_factory=lambda: [10, 50])
    group_by: str | None = Field(
        None, description="column that identifies one request (e.g. search_id): its rows' items "
        "are the targets of one ranking. Default: every row is one request")
    exclude_seen_by: str | None = Field(
        None, description="column identifying a user whose training items are removed from "
        "their ranking (e.g. user_id). Default: nothing removed")
    chunk_size: int = Field(1024, gt=0)
    metric: str = Field("hr@50", description="validation metric for early stopping")


class RunConfig(StrictModel):
    name: str = "run"
    run_dir: Path | None = Field(None, description="default: runs/<name>")
    data: DataConfig
    # SerializeAsAny: dump the registered subclass's fields too (a saved config.yaml must
    # reload into the same model)
    model: SerializeAsAny[ModelConfig] = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _temperature_moved(cls, raw: Any) -> Any:
        # model.temperature moved to objective.temperature (the loss owns it); an older config
        # (or a run folder's config.yaml) still loads, with a warning
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        model = raw["model"]
        if "temperature" not in model:
            return raw
        entry = registry.model_entry(model.get("name", "dssm"))
        if entry is not None and "temperature" in entry[1].model_fields:
            return raw  # a model whose own scoring has a temperature (PDN's SimilarityNet)
        objective = dict(raw.get("objective") or {})
        if "temperature" in objective:
            raise ValueError("model.temperature moved to objective.temperature; remove "
                             "model.temperature (both are set)")
        warnings.warn("model.temperature moved to objective.temperature; reading it from there",
                      DeprecationWarning, stacklevel=2)
        objective["temperature"] = model["temperature"]
        model = {k: v for k, v in model.items() if k != "temperature"}
        return {**raw, "model": model, "objective": objective}

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        # The model's own config class decides which fields are valid.
        if isinstance(value, ModelConfig):
            value = value.model_dump()
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError("model must be a mapping")
        return model_config_class(value.get("name", "dssm")).model_validate(value)

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name


def model_config_class(name: str) -> type[ModelConfig]:
    """The config class registered for ``model.name``; a ValueError (reported by pydantic as
    ``model: ...``) names the known models."""
    entry = registry.model_entry(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(registry.model_names())}")
    return entry[1]


def _known_fields(loc: tuple, raw: Any) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location), for 'did you mean'."""
    model: type[BaseModel] | None = RunConfig
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        if part == "model":
            name = (raw or {}).get("model", {}).get("name", "dssm") if isinstance(raw, dict) else "dssm"
            try:
                model = model_config_class(name)
            except Exception:
                model = ModelConfig
            continue
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.lr=3e-4", "model.hidden=[128,64]"]`` into a nested mapping."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text else None
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate_config(raw: Any, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(validation_message(err, source, known_fields=lambda loc: _known_fields(loc, raw))) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides, and validate it.

    Relative data paths are resolved against the config file's folder, so a config can travel
    with its data.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty")
    if overrides:
        raw = merge(raw, parse_overrides(overrides))
    cfg = validate_config(raw, str(path))
    base = path.parent
    for key in ("train", "valid", "test", "items"):
        p = getattr(cfg.data, key)
        if p is not None and not p.is_absolute() and not p.exists() and (base / p).exists():
            setattr(cfg.data, key, base / p)
    for section, key in ((cfg.objective.ldm, "funnel"), (cfg.objective.dmtl, "teacher")):
        p = getattr(section, key)
        if p is not None and not p.is_absolute() and not p.exists() and (base / p).exists():
            setattr(section, key, base / p)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
