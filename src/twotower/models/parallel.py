"""Parallel two-tower: MLP, DCN, FM and CIN towers side by side, scores fused by a learned LR.

The parallel two-tower model (Tencent, 并联双塔): each side runs several tower types over the same
field embeddings — an MLP (implicit interactions), a cross network (DCN, Wang et al. 2017), a
factorisation machine (Rendle 2010) and a CIN (xDeepFM, Lian et al. 2018). Tower type k yields a
query vector u_k and an item vector v_k (L2-normalised); its match score is cos(u_k, v_k), and a
logistic-regression layer fuses the K scores: ``sum_k w_k cos_k + b`` (the objective divides by
its temperature).

Served as one inner product: the query's retrieval vector is ``[w_1 u_1, ..., w_K u_K]`` and the
item's is ``[v_1, ..., v_K]``, whose inner product is ``sum_k w_k cos_k`` — the same ranking as the
training logit (the bias and the positive temperature do not change an order).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.cin import CIN
from twotower.towers.cross import CrossNetwork
from twotower.towers.embedding import FeatureSchema
from twotower.towers.fields import CommonWidth
from twotower.towers.fm import FMTower
from twotower.towers.fusion import LogisticFusion
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features, Similarity

TowerKind = Literal["mlp", "dcn", "fm", "cin"]


class ParallelConfig(ModelConfig):
    name: str = "parallel"
    towers: list[TowerKind] = Field(default_factory=lambda: ["mlp", "dcn", "fm", "cin"])
    cross_layers: int = Field(2, ge=1)
    cin_layers: list[int] = Field(default_factory=lambda: [16, 16])

    @field_validator("towers")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("towers must be a non-empty list of distinct tower types")
        return v


class ParallelSide(nn.Module):
    """All tower types of one side; ``forward(fields) -> list of [B, D_k]`` (normalised)."""

    def __init__(self, cfg: ParallelConfig, dims: list[int]):
        super().__init__()
        self.kinds = list(cfg.towers)
        width = sum(dims)
        self.common = CommonWidth(dims, cfg.embedding_dim)
        self.towers = nn.ModuleDict()
        for kind in self.kinds:
            if kind == "mlp":
                self.towers[kind] = MLP(width, cfg.hidden, cfg.output_dim, cfg.dropout)
            elif kind == "dcn":
                self.towers[kind] = nn.Sequential(CrossNetwork(width, cfg.cross_layers),
                                                  nn.Linear(width, cfg.output_dim))
            elif kind == "fm":
                self.towers[kind] = FMTower(cfg.embedding_dim, cfg.output_dim)
            else:
                self.towers[kind] = CIN(len(dims), cfg.cin_layers, cfg.output_dim)

    def forward(self, fields: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat(fields, dim=-1)
        stacked = self.common(fields) if {"fm", "cin"} & set(self.kinds) else None
        out = []
        for kind in self.kinds:
            x = flat if kind in ("mlp", "dcn") else stacked
            out.append(l2_normalize(self.towers[kind](x)))
        return out


@register("parallel", ParallelConfig)
class ParallelTwoTower(TwoTowerModel):
    similarity = Similarity.INNER_PRODUCT

    def __init__(self, cfg: ParallelConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.query_side = ParallelSide(cfg, [schema[n].dim for n in self.query_fields])
        self.item_side = ParallelSide(cfg, [schema[n].dim for n in self.item_fields])
        self.fusion = LogisticFusion(len(cfg.towers))
        self.k = len(cfg.towers)

    def encode_query(self, features: Features) -> torch.Tensor:
        return torch.cat(self.query_side(self.embedding(features, self.query_fields)), -1).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return torch.cat(self.item_side(self.embedding(features, self.item_fields)), -1).unsqueeze(1)

    def _parts(self, x: torch.Tensor) -> torch.Tensor:
        """[B, V, K*D] -> [B, K, D] (first vector)."""
        return x[:, 0].reshape(x.shape[0], self.k, -1)

    def tower_scores(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Per-tower cosine of every query with every item: [B, N, K]."""
        return torch.einsum("bkd,nkd->bnk", self._parts(q), self._parts(i))

    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.tower_scores(q, i))

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        s = (self._parts(q) * self._parts(i)).sum(-1)  # [B, K]
        return self.fusion(s)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        parts = self._parts(q) * self.fusion.weight[None, :, None]
        return parts.reshape(q.shape[0], 1, -1)

    def retrieval_item(self, i: torch.Tensor) -> torch.Tensor:
        return i[:, 0]

    def contract(self) -> dict:
        return {**super().contract(), "dim": self.k * self.cfg.output_dim,
                "towers": list(self.cfg.towers),
                "score": "sum_k w_k cos(u_k, v_k) (LR-fused tower cosines; bias and temperature "
                         "omitted at retrieval)"}
