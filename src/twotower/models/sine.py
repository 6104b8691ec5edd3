"""SINE: Sparse-Interest Network for Sequential Recommendation.

Tan et al., "Sparse-Interest Network for Sequential Recommendation" (WSDM 2021). A large pool of
concept prototypes; each sequence activates only its top-K concepts
(``towers.interests.SparseInterests``), assigns every behaviour to them (intention assignment),
weighs the behaviours per concept (attention weighting) into K interest embeddings, and its
interest-aggregation module predicts the next intention to mix the interests into one next-item
vector. Query vectors: [B, 1 + K, D] = [next-item vector, the K interests]; training and, by
default, retrieval use the next-item vector (``serve_interests: true`` searches the K interests
instead, max-merged). ``concept_regularization`` weighs the paper's covariance penalty on the
pool (``objectives.sine``).
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.embedding import FeatureSchema
from twotower.towers.interests import SparseInterests
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import embed_sequence
from twotower.types import Features


class SINEConfig(SequenceModelConfig):
    concepts: int = Field(64, gt=0, description="P: size of the concept pool")
    num_interests: int = Field(4, gt=0, description="K: concepts activated per sequence")
    max_len: int = Field(50, gt=0, description="longest behaviour sequence (position rows)")
    aggregation_temperature: float = Field(0.1, gt=0, description="tau of the interest aggregation")
    concept_regularization: float = Field(0.0, ge=0, description="weight of the pool's covariance "
                                          "penalty (decorrelates the concepts)")
    serve_interests: bool = Field(False, description="retrieve with the K interests, not the "
                                  "aggregated next-item vector")


@register("sine", SINEConfig)
class SINE(UserSideMixin, TwoTowerModel):
    def __init__(self, cfg: SINEConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        self.proj = torch.nn.Linear(self.schema[cfg.history].dim, cfg.output_dim)
        self.sparse = SparseInterests(cfg.output_dim, cfg.concepts, cfg.num_interests, cfg.max_len,
                                      cfg.aggregation_temperature)
        # the user's side features (if any) shift the aggregated vector and every interest
        self.side_proj = (torch.nn.Linear(self.field_width(self.side_fields), cfg.output_dim)
                          if self.side_fields else None)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        phi, v = self.sparse(self.proj(e), mask)  # [B, K, D], [B, D]
        out = torch.cat([v.unsqueeze(1), phi], 1)  # [B, 1 + K, D]
        if self.side_proj is not None:
            side = self._side(features, self.side_fields, out.shape[0], out.device)
            out = out + self.side_proj(side).unsqueeze(1)
        return l2_normalize(out)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        return q[:, 1:] if self.cfg.serve_interests else q[:, :1]

    def contract(self) -> dict:
        return {**super().contract(), "num_interests": self.cfg.num_interests,
                "query_vectors": "interests 1..K" if self.cfg.serve_interests else "0 (aggregated)"}
