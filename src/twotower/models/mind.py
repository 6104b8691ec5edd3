"""MIND: Multi-Interest Network with Dynamic routing.

Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall" (CIKM 2019).
The history's item embeddings are routed into K interest capsules (``towers.capsule``: shared
bilinear map, fixed iterations, squash; K_u = max(1, min(K, log2 n_u)) interests per user); each
capsule is concatenated with the user's side features and passed through a shared ReLU MLP.

Training: label-aware attention over the interests for every (query, item) pair of the in-batch
softmax (``logits`` / ``pair_logits``), weights softmax_k(p * <v_k, e_item>). Serving: all K
interest vectors are searched and the results max-merged (``retrieval_query`` -> [B, K, D]);
a user with fewer interests repeats the first one, which changes nothing under the max merge.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.capsule import CapsuleRouting, dynamic_interest_count
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import embed_sequence, label_aware_logits, label_aware_weights
from twotower.types import Features


class MultiInterestConfig(SequenceModelConfig):
    num_interests: int = Field(4, gt=0, description="K: interest vectors per user")
    label_attention_power: float = Field(2.0, ge=0, description="p of label-aware attention")
    hard_attention: bool = Field(False, description="train with the closest interest only (p -> inf)")
    max_len: int = Field(50, gt=0, description="longest behaviour sequence (the feature's max_len)")


class MindConfig(MultiInterestConfig):
    routing_iterations: int = Field(3, gt=0)
    dynamic_interests: bool = Field(True, description="K_u from the history length")


class MultiInterestModel(TwoTowerModel):
    """Shared scoring of multi-interest models: queries [B, K, D] with empty interests zeroed."""

    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        valid = q.abs().sum(-1) > 0  # [B, K]
        return label_aware_logits(q, i[:, 0], self.cfg.label_attention_power,
                                  self.cfg.hard_attention, valid)

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        valid = q.abs().sum(-1) > 0
        # row-aligned pairs: the diagonal of ``logits``, one item per row
        s = torch.einsum("bkd,bd->bk", q, i[:, 0])
        w = label_aware_weights(s, valid, self.cfg.label_attention_power, self.cfg.hard_attention)
        return (w * s).sum(-1)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        valid = (q.abs().sum(-1) > 0).unsqueeze(-1)
        return torch.where(valid, q, q[:, :1].expand_as(q))

    def contract(self) -> dict:
        return {**super().contract(), "query_vectors": "all", "num_interests": self.cfg.num_interests}


@register("mind", MindConfig)
class MIND(UserSideMixin, MultiInterestModel):
    def __init__(self, cfg: MindConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        e = self.schema[cfg.history].dim
        self.routing = CapsuleRouting(e, e, cfg.num_interests, cfg.routing_iterations,
                                      shared_map=True, max_len=cfg.max_len)
        self.user_tower = MLP(e + self.field_width(self.side_fields), cfg.hidden, cfg.output_dim,
                              cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def interests(self, features: Features, iterations: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(interest capsules [B, K, E] before the MLP, valid bool[B, K])."""
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        if self.cfg.dynamic_interests:
            valid = dynamic_interest_count(mask, self.cfg.num_interests)
        else:
            valid = torch.ones(e.shape[0], self.cfg.num_interests, dtype=torch.bool, device=e.device)
        return self.routing(e, mask, valid, iterations), valid

    def encode_query(self, features: Features) -> torch.Tensor:
        caps, valid = self.interests(features)
        b, k, _ = caps.shape
        side = self._side(features, self.side_fields, b, caps.device)
        x = torch.cat([caps, side.unsqueeze(1).expand(b, k, -1)], -1)
        out = l2_normalize(self.user_tower(x))  # [B, K, D]
        return out * valid.unsqueeze(-1).to(out.dtype)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)
