"""DSSM: the plain two-tower model.

Huang et al., "Learning Deep Structured Semantic Models for Web Search using Clickthrough Data"
(CIKM 2013). Each tower concatenates its field embeddings (a history or text field is mean-pooled)
and maps them through an MLP to an L2-normalised vector; the logit is cosine / temperature.
"""
from __future__ import annotations

import torch

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features


@register("dssm", ModelConfig)
class DSSM(TwoTowerModel):
    def __init__(self, cfg: ModelConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.query_tower = MLP(self.field_width(self.query_fields), cfg.hidden, cfg.output_dim,
                               cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.hidden, cfg.output_dim,
                              cfg.dropout)

    def encode_query(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.query_fields), dim=-1)  # [B, sum E]
        return l2_normalize(self.query_tower(x)).unsqueeze(1)  # [B, 1, D]

    def encode_item(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        return l2_normalize(self.item_tower(x)).unsqueeze(1)  # [N, 1, D]
