"""SENet two-tower: squeeze-excitation re-weights each tower's fields before its MLP.

Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018), applied per tower as in the SENet
two-tower model (field importance learned per example: noisy fields are suppressed, informative ones
amplified). ``field_weights(features, side)`` exposes the learned weights; ``twotower fields
RUN_DIR`` prints their mean over a sample of the run's data.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.senet import FieldSqueezeExcitation
from twotower.types import Features, Side


class SENetConfig(ModelConfig):
    name: str = "senet"
    reduction: float = Field(2.0, gt=0, description="bottleneck: hidden = fields / reduction")
    gate: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="sigmoid: each weight in (0, 1); softmax: weights sum to #fields")


@register("senet", SENetConfig)
class SENetTwoTower(TwoTowerModel):
    def __init__(self, cfg: SENetConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.query_se = FieldSqueezeExcitation(len(self.query_fields), cfg.reduction, cfg.gate)
        self.item_se = FieldSqueezeExcitation(len(self.item_fields), cfg.reduction, cfg.gate)
        self.query_tower = MLP(self.field_width(self.query_fields), cfg.hidden, cfg.output_dim,
                               cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.hidden, cfg.output_dim,
                              cfg.dropout)

    def _side(self, side: Side):
        if side == Side.QUERY:
            return self.query_fields, self.query_se, self.query_tower
        return self.item_fields, self.item_se, self.item_tower

    def field_weights(self, features: Features, side: Side | str) -> torch.Tensor:
        """Weights [B, F] of the side's fields (in ``query_fields`` / ``item_fields`` order)."""
        names, se, _ = self._side(Side(side))
        return se.weights(self.embedding(features, names))

    def _encode(self, features: Features, side: Side) -> torch.Tensor:
        names, se, tower = self._side(side)
        fields, _ = se(self.embedding(features, names))
        return l2_normalize(tower(torch.cat(fields, dim=-1))).unsqueeze(1)  # [B, 1, D]

    def encode_query(self, features: Features) -> torch.Tensor:
        return self._encode(features, Side.QUERY)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._encode(features, Side.ITEM)


@torch.no_grad()
def mean_field_weights(run_dir, split: str = "valid", max_rows: int = 20_000) -> dict[str, dict[str, float]]:
    """Mean SE field weight of every field of a trained SENet run.

    Query fields are averaged over (up to ``max_rows``) rows of ``split`` (falling back to train),
    item fields over the item corpus. Returns ``{"query": {field: w}, "item": {field: w}}``."""
    from twotower.errors import ConfigError
    from twotower.features.feature_set import FeatureSet
    from twotower.pipeline import RunData, load_model, load_run_config
    from twotower.run import RunDir

    run = RunDir(run_dir)
    cfg = load_run_config(run)
    model = load_model(run)
    if not hasattr(model, "field_weights"):
        raise ConfigError(f"{run.root}: model {cfg.model.name!r} has no field weights "
                          "(only SENet models learn them)")
    features = FeatureSet.load(run.features)
    data = RunData(cfg, features)
    log = None
    for s in (split, "train"):
        if data.reader.path(s) is not None:
            log = data.reader.load(s)
            break
    out: dict[str, dict[str, float]] = {}
    rows = np.arange(min(len(log), max_rows))
    q = {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in log.query.items()}
    wq = model.field_weights(q, Side.QUERY).mean(0)
    out["query"] = {n: float(w) for n, w in zip(model.query_fields, wq)}
    corpus = data.corpus()
    wi = model.field_weights(corpus.tensors(slice(0, max_rows)), Side.ITEM).mean(0)
    out["item"] = {n: float(w) for n, w in zip(model.item_fields, wi)}
    return out
