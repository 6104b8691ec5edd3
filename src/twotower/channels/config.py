"""``ChannelsConfig``: the channels of a multi-channel retriever and how they merge, from YAML.

    name: movielens
    channels:
      - {name: dssm, kind: run, run: runs/movielens, weight: 1.0}
      - {name: itemcf, kind: itemcf, log: data/interactions.parquet, history_field: history}
      - {name: popular, kind: popularity, log: data/interactions.parquet, half_life_days: 30}
      - {name: lexical, kind: bm25, items: data/ads.parquet, text: [ad_title], query_field: query_text}
      - {name: paths, kind: pdn, run: runs/pdn, neighbours: 200}
    merge: {n: 100, fetch_k: 200, calibration: rrf, quota: none}

Relative paths are resolved against the YAML file's folder. An invalid file raises one
``ConfigError`` whose lines name the channel (by its ``name``) and the field.
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twotower.errors import ConfigError, validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Calibration(str, Enum):
    RRF = "rrf"            # weight / (rrf_k + rank): rank-based, needs no comparable scores
    ZSCORE = "zscore"      # (s - mean) / std over the channel's fetched list
    MINMAX = "minmax"      # (s - min) / (max - min) over the channel's fetched list
    NONE = "none"          # raw scores as they are (normalisation switched off)
    ISOTONIC = "isotonic"  # raw score -> click probability, fitted per channel on a click log


class Quota(str, Enum):
    NONE = "none"          # overall top-N by fused score
    FIXED = "fixed"        # each channel keeps its own `quota` items, the rest by fused score
    SNAKE = "snake"        # quotas weight / sum(weights) x N, filled round-robin (snake merge)
    PRIORITY = "priority"  # channels in config order; a channel's unused quota carries over


class Fusion(str, Enum):
    SUM = "sum"  # an item found by several channels collects every channel's weighted score
    MAX = "max"  # the best weighted score of any channel that found it


class ChannelBase(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(1.0, ge=0.0, description="merge weight (learned weights replace it)")
    fetch_k: Optional[int] = Field(None, ge=1, description="items fetched (default merge.fetch_k)")
    quota: Optional[int] = Field(None, ge=0, description="items kept (quota: fixed / priority)")
    calibration: Optional[Calibration] = Field(None, description="override of merge.calibration")


class RunChannel(ChannelBase):
    """A trained twotower run with its index (DSSM, MOBIUS, multi-interest: every vector searches)."""

    kind: Literal["run"]
    run: Path
    index_version: Optional[str] = Field(None, pattern=r"^v\d{6}$")


class _LogChannel(ChannelBase):
    log: Path
    item: str = "item_id"
    split_column: Optional[str] = None
    splits: list[str] = Field(default_factory=lambda: ["train"])
    label: Optional[str] = Field(None, description="rows with label > 0 only (e.g. click)")


class ItemCFChannel(_LogChannel):
    """Item-to-item co-occurrence (ItemCF) from the log, keyed by the request's recent items."""

    kind: Literal["itemcf"]
    user: str = "user_id"
    timestamp: Optional[str] = None
    history_field: str = "history"
    recent: int = Field(20, ge=1, description="most recent history items used as keys")
    neighbours: int = Field(200, ge=1, description="neighbours kept per item")
    position_decay: float = Field(0.9, gt=0.0, le=1.0, description="weight of the j-th most recent key: decay^j")
    window: Optional[int] = Field(None, ge=1, description="co-occur only within this many consecutive interactions")


class EmbeddingI2IChannel(ChannelBase):
    """Item-to-item by a run's item vectors, keyed by the request's recent items."""

    kind: Literal["i2i"]
    run: Path
    history_field: str = "history"
    recent: int = Field(20, ge=1)
    neighbours: int = Field(200, ge=1)
    position_decay: float = Field(0.9, gt=0.0, le=1.0)


class PopularityChannel(_LogChannel):
    """Most popular items, counts decayed by age (trending) when ``half_life_days`` is set."""

    kind: Literal["popularity"]
    timestamp: Optional[str] = None
    half_life_days: Optional[float] = Field(None, gt=0.0)


class BM25Channel(ChannelBase):
    """Lexical BM25 of the request's text field over item text (Robertson & Zaragoza, 2009)."""

    kind: Literal["bm25"]
    items: Path
    item: str = "item_id"
    text: list[str] = Field(..., min_length=1, description="item text columns")
    query_field: str = "query_text"
    k1: float = Field(1.2, ge=0.0)
    b: float = Field(0.75, ge=0.0, le=1.0)


class PDNChannel(ChannelBase):
    """PDN's trigger paths (Li et al., SIGIR 2021): a PDN run served through its SimilarityNet
    item-to-item table, every path user -> trigger (a history item) -> item summed per item."""

    kind: Literal["pdn"]
    run: Path
    neighbours: int = Field(200, ge=1, description="SimilarityNet neighbours kept per trigger item")


ChannelConfig = Annotated[Union[RunChannel, ItemCFChannel, EmbeddingI2IChannel, PopularityChannel,
                                BM25Channel, PDNChannel], Field(discriminator="kind")]
KINDS = ("run", "itemcf", "i2i", "popularity", "bm25", "pdn")


class MergeConfig(_Strict):
    n: int = Field(100, ge=1, description="default number of merged results")
    fetch_k: int = Field(200, ge=1, description="items fetched per channel (overfetch); a channel's "
                         "list is cut here, so merges never depend on how many a channel could give")
    calibration: Calibration = Calibration.RRF
    rrf_k: float = Field(60.0, ge=0.0)
    fusion: Fusion = Fusion.SUM
    quota: Quota = Quota.NONE
    seed: int = Field(0, description="seed of the tie-break order between equal scores")
    exclude_field: Optional[str] = Field(None, description="request field listing items never to "
                                         "return (e.g. the user's history)")
    isotonic_log: Optional[Path] = Field(None, description="click log (channel, score, click) the "
                                         "isotonic calibration is fitted on")
    debias_alpha: float = Field(0.0, ge=0.0, description="fused score / (1 + popularity)^alpha")
    debias_channel: Optional[str] = Field(None, description="popularity channel whose counts debias")


class ServiceConfig(_Strict):
    budget_ms: float = Field(1000.0, gt=0.0, description="latency budget: channels still running "
                             "then are reported as timed out and the rest answer")
    workers: Optional[int] = Field(None, ge=1, description="threads running channels (default: one each)")
    math_threads: Optional[int] = Field(None, ge=1, description="threads of each channel's "
                                        "torch / FAISS work (process-wide; default: as they are). "
                                        "1: the channels' own concurrency uses the cores instead "
                                        "of every channel's thread pool fighting for them")


class Bandit(str, Enum):
    THOMPSON = "thompson"
    UCB = "ucb"


class LearningConfig(_Strict):
    bandit: Bandit = Bandit.THOMPSON
    reward: Literal["click", "conversion"] = "click"
    prior: tuple[float, float] = (1.0, 1.0)
    ucb_c: float = Field(1.0, ge=0.0)
    sharpness: float = Field(1.0, gt=0.0, description="weights ∝ (estimated reward)^sharpness")
    floor: float = Field(0.02, ge=0.0, lt=1.0, description="least share any channel keeps")
    request_column: str = Field("request_id", description="feedback log: one id per request")
    item_column: str = Field("item_id", description="feedback log: the item shown")
    channels_column: str = Field("channels", description="feedback log: channels that found it")
    weights_file: Optional[Path] = Field(None, description="learned weights + history "
                                         "(default: <config>.weights.json beside the YAML)")


class ChannelsConfig(_Strict):
    name: str = "channels"
    output: Optional[Path] = Field(None, description="folder of built artifacts (default runs/channels/<name>)")
    channels: list[ChannelConfig] = Field(..., min_length=1)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ChannelsConfig":
        names = [c.name for c in self.channels]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"channel names must be unique: {', '.join(dup)} repeated")
        if self.merge.quota in (Quota.FIXED, Quota.PRIORITY):
            missing = [c.name for c in self.channels if c.quota is None]
            if missing:
                raise ValueError(f"merge.quota {self.merge.quota.value!r} needs `quota` on every "
                                 f"channel; missing on {', '.join(missing)}")
        if self.merge.debias_channel is not None:
            by = {c.name: c for c in self.channels}
            ch = by.get(self.merge.debias_channel)
            if ch is None or ch.kind != "popularity":
                raise ValueError(f"merge.debias_channel {self.merge.debias_channel!r} must name a "
                                 "popularity channel")
        uses_iso = self.merge.calibration == Calibration.ISOTONIC or any(
            c.calibration == Calibration.ISOTONIC for c in self.channels)
        if uses_iso and self.merge.isotonic_log is None:
            raise ValueError("isotonic calibration needs merge.isotonic_log (a click log)")
        return self

    def channel(self, name: str) -> Any:
        for c in self.channels:
            if c.name == name:
                return c
        raise ConfigError(f"no channel named {name!r}; channels are "
                          f"{', '.join(c.name for c in self.channels)}")

    def fetch_k(self, ch: ChannelBase) -> int:
        return ch.fetch_k or self.merge.fetch_k

    def calibration_of(self, ch: ChannelBase) -> Calibration:
        return ch.calibration or self.merge.calibration

    @property
    def output_dir(self) -> Path:
        return self.output if self.output is not None else Path("runs") / "channels" / self.name

    @property
    def weights_path(self) -> Path:
        if self.learning.weights_file is not None:
            return self.learning.weights_file
        return self.output_dir / "weights.json"


_PATH_FIELDS = ("run", "log", "items")


def _where(loc: tuple, raw: Any) -> str:
    """'channel "itemcf" (kind itemcf): recent' for a pydantic location inside channels[i]."""
    if len(loc) >= 2 and loc[0] == "channels" and isinstance(loc[1], int):
        chans = raw.get("channels") if isinstance(raw, dict) else None
        name = None
        if isinstance(chans, list) and loc[1] < len(chans) and isinstance(chans[loc[1]], dict):
            name = chans[loc[1]].get("name")
        rest = [str(p) for p in loc[2:] if str(p) not in KINDS]  # drop the union's tag
        who = f"channel {name!r}" if name else f"channels[{loc[1]}]"
        return who + (f": {'.'.join(rest)}" if rest else "")
    return ".".join(str(p) for p in loc) or "(top level)"


def _fields_of(kind: Any) -> list[str]:
    models = {"run": RunChannel, "itemcf": ItemCFChannel, "i2i": EmbeddingI2IChannel,
              "popularity": PopularityChannel, "bm25": BM25Channel, "pdn": PDNChannel}
    return list(models[kind].model_fields) if kind in models else []


def validate_channels(raw: Any, source: str = "channels config", base: Path | None = None
                      ) -> ChannelsConfig:
    """Validate a mapping (paths relative to ``base``); errors name the channel and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    chans = raw.get("channels")
    if isinstance(chans, list):
        for i, c in enumerate(chans):
            if isinstance(c, dict) and "kind" in c and c["kind"] not in KINDS:
                raise ConfigError(f"{source}: channel {c.get('name', i)!r}: kind {c['kind']!r} is "
                                  f"not one of {', '.join(KINDS)}")
            if isinstance(c, dict) and "kind" not in c:
                raise ConfigError(f"{source}: channel {c.get('name', i)!r}: kind is required "
                                  f"({', '.join(KINDS)})")
    try:
        cfg = ChannelsConfig.model_validate(raw)
    except ValidationError as err:
        def known(parent: tuple) -> list[str]:  # the fields of the channel's kind
            if len(parent) >= 2 and parent[0] == "channels" and isinstance(parent[1], int):
                kind = chans[parent[1]].get("kind") if isinstance(chans, list) else None
                return _fields_of(kind)
            return []

        raise ConfigError(validation_message(err, source, "channels configuration",
                                             where=lambda loc: _where(loc, raw),
                                             known_fields=known)) from None
    if base is not None:
        cfg = _resolve_paths(cfg, base)
    return cfg


def _resolve_paths(cfg: ChannelsConfig, base: Path) -> ChannelsConfig:
    def fix(p: Optional[Path]) -> Optional[Path]:
        return p if p is None or p.is_absolute() else base / p

    for ch in cfg.channels:
        for f in _PATH_FIELDS:
            if hasattr(ch, f):
                setattr(ch, f, fix(getattr(ch, f)))
    cfg.merge.isotonic_log = fix(cfg.merge.isotonic_log)
    cfg.output = fix(cfg.output) if cfg.output is not None else None
    cfg.learning.weights_file = fix(cfg.learning.weights_file)
    return cfg


def load_channels_config(path: str | Path) -> ChannelsConfig:
    """Read and validate a channels YAML file (relative paths against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: channels config not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    cfg = validate_channels(raw, str(path), path.resolve().parent)
    if cfg.output is None:
        cfg.output = path.resolve().parent / "runs" / "channels" / cfg.name
    return cfg
