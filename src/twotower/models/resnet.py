"""ResNet-style two-tower: residual MLP towers whose skip paths carry low-level features up.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), used as the tower body:
each tower projects its concatenated field embeddings to ``width`` and runs ``depth`` residual
blocks, so the top layer sees the input features through the identity paths.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import l2_normalize
from twotower.towers.residual import ResidualMLP
from twotower.types import Features


class ResNetConfig(ModelConfig):
    name: str = "resnet"
    depth: int = Field(2, ge=1, description="residual blocks per tower")
    width: int | None = Field(None, gt=0, description="block width; default: hidden[0]")
    skip: bool = Field(True, description="false: the same layers without skip paths (ablation)")


@register("resnet", ResNetConfig)
class ResNetTwoTower(TwoTowerModel):
    def __init__(self, cfg: ResNetConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        width = cfg.width or (cfg.hidden[0] if cfg.hidden else cfg.output_dim)
        self.query_tower = ResidualMLP(self.field_width(self.query_fields), width, cfg.depth,
                                       cfg.output_dim, cfg.dropout, cfg.skip)
        self.item_tower = ResidualMLP(self.field_width(self.item_fields), width, cfg.depth,
                                      cfg.output_dim, cfg.dropout, cfg.skip)

    def encode_query(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.query_fields), dim=-1)
        return l2_normalize(self.query_tower(x)).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        return l2_normalize(self.item_tower(x)).unsqueeze(1)
