"""Que2Search-style multi-channel towers fused by attention over channels.

Liu et al., "Que2Search: Fast and Accurate Query and Document Understanding for Search at
Facebook" (KDD 2021). Every feature of a side is one *channel* — e.g. the query text's word ids
(``tokens: [word]``), the same text's character 3-grams (a second feature on the same column with
``tokens: [char3]``), and categorical side features (country, user id; category, advertiser). Each
channel is encoded separately by its own small MLP into the output space, then the channels are
fused by attention (weights sum to 1 per example), on the query side and on the document side.
(The paper's XLM-R text encoder, image channel and two-stage / multi-task curriculum are not
reproduced: channels here are bag-of-token and id embeddings.)
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.fusion import ChannelAttention
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features, Side


class Que2SearchConfig(ModelConfig):
    name: str = "que2search"
    hidden: list[int] = Field(default_factory=lambda: [128], description="per-channel MLP")
    attention_hidden: int | None = Field(None, gt=0, description="default: output_dim")


class ChannelTower(nn.Module):
    """Per-channel MLPs to a common width, then attention over the channels."""

    def __init__(self, dims: list[int], hidden: list[int], out_dim: int, dropout: float,
                 attention_hidden: int | None):
        super().__init__()
        self.channels = nn.ModuleList([MLP(d, hidden, out_dim, dropout) for d in dims])
        self.attention = ChannelAttention(out_dim, attention_hidden)
        self.out = nn.Linear(out_dim, out_dim)

    def forward(self, fields: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack([enc(f) for enc, f in zip(self.channels, fields)], dim=1)  # [B, C, D]
        fused, w = self.attention(h)
        return self.out(fused), w


@register("que2search", Que2SearchConfig)
class Que2SearchTwoTower(TwoTowerModel):
    def __init__(self, cfg: Que2SearchConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.query_tower = ChannelTower([schema[n].dim for n in self.query_fields], cfg.hidden,
                                        cfg.output_dim, cfg.dropout, cfg.attention_hidden)
        self.item_tower = ChannelTower([schema[n].dim for n in self.item_fields], cfg.hidden,
                                       cfg.output_dim, cfg.dropout, cfg.attention_hidden)

    def channel_weights(self, features: Features, side: Side | str) -> torch.Tensor:
        """Attention weights [B, C] over the side's channels (rows sum to 1)."""
        if Side(side) == Side.QUERY:
            return self.query_tower(self.embedding(features, self.query_fields))[1]
        return self.item_tower(self.embedding(features, self.item_fields))[1]

    def encode_query(self, features: Features) -> torch.Tensor:
        v, _ = self.query_tower(self.embedding(features, self.query_fields))
        return l2_normalize(v).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        v, _ = self.item_tower(self.embedding(features, self.item_fields))
        return l2_normalize(v).unsqueeze(1)
