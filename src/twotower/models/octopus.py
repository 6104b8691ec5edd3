"""Octopus: an elastic number of interests per user.

Liu et al., "Octopus: Comprehensive and Elastic User Representation for the Generation of
Recommendation Candidates" (SIGIR 2020). The behaviour sequence is filed into M global archives
(``towers.interests.ElasticArchives``); the archives that hold a real share of the user's
behaviours are that user's interests — one for a focused history, up to M for a varied one —
each mapped with the user's side features through a shared MLP and retrieving on its own
(searched separately, results max-merged). Trained like MIND: label-aware attention over the
active interests (``hard_attention`` picks the closest one) in the in-batch softmax.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.models.base import register
from twotower.models.mind import MultiInterestConfig, MultiInterestModel
from twotower.models.youtubednn import UserSideMixin
from twotower.towers.embedding import FeatureSchema
from twotower.towers.interests import ElasticArchives
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import embed_sequence
from twotower.types import Features


class OctopusConfig(MultiInterestConfig):
    num_interests: int = Field(8, gt=0, description="M: archives (the most interests a user can have)")
    min_share: float = Field(0.1, gt=0, le=1, description="share of the user's behaviours an "
                             "archive must hold to be an interest (at least half a behaviour's mass)")
    hard_attention: bool = Field(True, description="train with the interest closest to the target")


@register("octopus", OctopusConfig)
class Octopus(UserSideMixin, MultiInterestModel):
    def __init__(self, cfg: OctopusConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        e = self.schema[cfg.history].dim
        self.proj = torch.nn.Linear(e, cfg.output_dim)
        self.archives = ElasticArchives(cfg.output_dim, cfg.num_interests, cfg.min_share)
        self.user_tower = MLP(cfg.output_dim + self.field_width(self.side_fields), cfg.hidden,
                              cfg.output_dim, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def interests(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(archive interests [B, M, D] before the MLP, active bool[B, M])."""
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        return self.archives(self.proj(e), mask)

    def encode_query(self, features: Features) -> torch.Tensor:
        caps, active = self.interests(features)
        b, m, _ = caps.shape
        side = self._side(features, self.side_fields, b, caps.device)
        out = l2_normalize(self.user_tower(torch.cat([caps, side.unsqueeze(1).expand(b, m, -1)], -1)))
        return out * active.unsqueeze(-1).to(out.dtype)  # [B, M, D], inactive archives zeroed

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)
