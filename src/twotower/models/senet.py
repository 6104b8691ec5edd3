"""SENet two-tower: squeeze-excitation re-weights each tower's fields before its MLP.

Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018), applied per tower as in the SENet
two-tower model (field importance learned per example: noisy fields are suppressed, informative ones
amplified). ``field_weights(features, side)`` exposes the learned weights; ``twotower fields
RUN_DIR`` prints their mean over a sample of the run's data (``eval.fields``).
"""
from __future__ import annotations

from typing import Literal

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
