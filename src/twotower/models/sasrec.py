"""SASRec: self-attentive sequential recommendation as a user tower.

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018). The behaviour sequence
(item embeddings from the item id's table, + learned positions) goes through ``blocks`` causal
transformer blocks (``towers.attention.CausalEncoder``); the state after the last item is the
user's next-item vector, shifted by a projection of the user's side features (if any). Every
training row of a leave-one-out log is one (prefix -> next item) example, so each position of a
user's sequence is a target, as in the paper's per-position loss.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.attention import CausalEncoder
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import embed_sequence
from twotower.types import Features


class SASRecConfig(SequenceModelConfig):
    blocks: int = Field(2, gt=0, description="transformer blocks")
    heads: int = Field(2, gt=0, description="attention heads (must divide output_dim)")
    max_len: int = Field(50, gt=0, description="longest behaviour sequence (position rows)")


@register("sasrec", SASRecConfig)
class SASRec(UserSideMixin, TwoTowerModel):
    def __init__(self, cfg: SASRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        d = cfg.output_dim
        self.proj = torch.nn.Linear(self.schema[cfg.history].dim, d)
        self.encoder = CausalEncoder(d, cfg.max_len, cfg.blocks, cfg.heads, cfg.dropout)
        self.side_proj = (torch.nn.Linear(self.field_width(self.side_fields), d)
                          if self.side_fields else None)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, d)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        state = self.encoder(self.proj(e), mask)  # [B, D]
        if self.side_proj is not None:
            state = state + self.side_proj(self._side(features, self.side_fields, e.shape[0], e.device))
        return l2_normalize(state).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)
