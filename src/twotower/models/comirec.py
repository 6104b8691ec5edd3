"""ComiRec: Controllable Multi-Interest Framework for Recommendation.

Cen et al., KDD 2020. Two multi-interest extractors over the behaviour sequence — ComiRec-SA
(self-attentive: A = softmax(W2 tanh(W1 H^T)), V = A H) and ComiRec-DR (dynamic routing with one
bilinear map per interest) — trained with the interest closest to the target (hard label-aware
attention, p -> inf; ``hard_attention: false`` uses MIND's soft attention instead), served with
the K interests searched and merged. The paper's controllable aggregation of the merged candidates
is a serving step: ``serve.aggregation.controllable_aggregate``.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.models.base import register
from twotower.models.mind import MultiInterestConfig, MultiInterestModel
from twotower.models.youtubednn import UserSideMixin
from twotower.towers.capsule import CapsuleRouting
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import SelfAttentiveInterests, embed_sequence
from twotower.types import Features


class ComiRecConfig(MultiInterestConfig):
    hard_attention: bool = Field(True, description="train with the closest interest (paper)")
    routing_iterations: int = Field(3, gt=0, description="ComiRec-DR only")


class _ComiRec(UserSideMixin, MultiInterestModel):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        # the paper reads the behaviour sequence only; other query fields (if any) shift every
        # interest by a learned projection of the user's side features
        self.side_fields = self._split_query_fields(cfg.history)
        self.side_proj = (torch.nn.Linear(self.field_width(self.side_fields), cfg.output_dim)
                          if self.side_fields else None)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def with_side(self, v: torch.Tensor, features: Features) -> torch.Tensor:
        if self.side_proj is None:
            return v
        side = self._side(features, self.side_fields, v.shape[0], v.device)
        return v + self.side_proj(side).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)


@register("comirec_sa", ComiRecConfig)
class ComiRecSA(_ComiRec):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.proj = torch.nn.Linear(self.schema[cfg.history].dim, cfg.output_dim)
        self.extractor = SelfAttentiveInterests(cfg.output_dim, cfg.num_interests, cfg.max_len)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        v = self.with_side(self.extractor(self.proj(e), mask), features)  # [B, K, D]
        out = l2_normalize(v)
        # an empty history has no interests but the first (a bias-only vector)
        keep = mask.any(1, keepdim=True) | (torch.arange(v.shape[1], device=v.device) == 0)
        if not mask.any(1).all():
            out = torch.where(mask.any(1)[:, None, None], out,
                              l2_normalize(self.proj.bias).expand_as(out))
        return out * keep.unsqueeze(-1).to(out.dtype)


@register("comirec_dr", ComiRecConfig)
class ComiRecDR(_ComiRec):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.routing = CapsuleRouting(self.schema[cfg.history].dim, cfg.output_dim, cfg.num_interests,
                                      cfg.routing_iterations, shared_map=False, max_len=cfg.max_len)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        caps = self.with_side(self.routing(e, mask), features)
        out = l2_normalize(caps)
        empty = ~mask.any(1)
        if empty.any():  # no behaviour: one constant interest instead of zeros
            first = torch.zeros_like(out[:1, :1]).index_fill(-1, torch.tensor([0], device=out.device), 1.0)
            filler = torch.cat([first, torch.zeros_like(out[:1, 1:])], 1)
            out = torch.where(empty[:, None, None], filler.expand_as(out), out)
        return out
