"""AttRec: short-term self-attention plus long-term metric learning.

Zhang et al., "Next Item Recommendation with Self-Attention" (arXiv 1808.06414, 2018). Short-term
intent m_u: self-attention over the ``short_len`` most recent items
(``towers.attention.ShortTermSelfAttention``); long-term preference: a user vector U_u (from the
user's side features: id, profile) against an item vector V_i, compared by Euclidean distance as
in metric learning. Score y(u, i) = -(omega ||U_u - V_i||^2 + (1 - omega) ||m_u - X_i||^2),
every vector kept in the unit ball; the item side gives both V_i and X_i. The negative distance is
an inner product of augmented vectors (``towers.metric``), so the model trains with the task's
softmax and serves from an inner-product index unchanged.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.errors import ConfigError
from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.attention import ShortTermSelfAttention, last_items
from twotower.towers.embedding import FeatureSchema
from twotower.towers.metric import clip_norm, distance_item, distance_query
from twotower.towers.mlp import MLP
from twotower.towers.sequence import embed_sequence, masked_mean
from twotower.types import Features, Similarity


class AttRecConfig(SequenceModelConfig):
    short_len: int = Field(5, gt=0, description="L: most recent items of the short-term part")
    omega: float = Field(0.3, ge=0, le=1, description="weight of the long-term distance")


@register("attrec", AttRecConfig)
class AttRec(UserSideMixin, TwoTowerModel):
    similarity = Similarity.INNER_PRODUCT

    def __init__(self, cfg: AttRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        d, e = cfg.output_dim, self.schema[cfg.history].dim
        self.weights = [cfg.omega, 1.0 - cfg.omega]
        self.proj = torch.nn.Linear(e, d)
        self.short_term = ShortTermSelfAttention(d, cfg.short_len)
        # U_u from the user's side features; without any, from the mean of the whole history
        self.long_term = MLP(self.field_width(self.side_fields) or e, cfg.hidden, d, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, 2 * d)  # [V_i, X_i]
        if not self.item_fields:
            raise ConfigError("model attrec: needs at least one item feature")

    def parts(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(long-term U_u [B, D], short-term m_u [B, D]), both in the unit ball."""
        x = features[self.cfg.history]
        e, mask = embed_sequence(self.embedding, self.cfg.history, last_items(x, self.cfg.short_len))
        short = self.short_term(self.proj(e), mask)
        if self.side_fields:
            user = self._side(features, self.side_fields, x.shape[0], x.device)
        else:
            full, full_mask = embed_sequence(self.embedding, self.cfg.history, x)
            user = masked_mean(full, full_mask)
        return clip_norm(self.long_term(user)), clip_norm(short)

    def item_parts(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_i [N, D], X_i [N, D]), both in the unit ball."""
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        v, xs = self.item_tower(x).chunk(2, -1)
        return clip_norm(v), clip_norm(xs)

    def encode_query(self, features: Features) -> torch.Tensor:
        return distance_query(list(self.parts(features)), self.weights).unsqueeze(1)  # [B, 1, 2D + 2]

    def encode_item(self, features: Features) -> torch.Tensor:
        return distance_item(list(self.item_parts(features)), self.weights).unsqueeze(1)  # [N, 1, 2D + 2]

    def contract(self) -> dict:
        return {**super().contract(), "dim": 2 * self.cfg.output_dim + 2, "normalized": False,
                "score": "-(omega |U - V|^2 + (1 - omega) |m - X|^2) as an inner product"}
