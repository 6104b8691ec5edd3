"""MOBIUS: a two-tower model with three vectors per side and a click / unclick / bad softmax.

Fan et al., "MOBIUS: Towards the Next Generation of Query-Ad Matching in Baidu's Sponsored
Search" (KDD 2019). Each tower outputs V = 3 L2-normalised vectors (default 3 x 32); class k's
similarity is the cosine of the two towers' k-th vectors; the objective divides by its
temperature and trains a softmax over (click, unclick, bad) with cross-entropy
(``objectives.losses.mobius_class_loss`` in ``mobius.task.MobiusTask``). At retrieval time
the paper uses only the click vectors (``retrieval: click``); ``retrieval: click_minus_bad``
searches the click cosine minus the bad cosine as one exact inner product of concatenated vectors,
``[c_q, -b_q] . [c_a, b_a]``, so an ad the model calls bad for the query drops out of the top.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from twotower.config import ModelConfig
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features

#: class order of the 3-way softmax; index = vector index in each tower's output.
CLASSES = ("click", "unclick", "bad")
CLICK, UNCLICK, BAD = 0, 1, 2


class MobiusConfig(ModelConfig):
    name: str = "mobius"
    output_dim: int = Field(32, gt=0, description="dimension of each of the vectors")
    num_vectors: int = Field(3, ge=2, le=3, description="3: click/unclick/bad; 2: click/unclick")
    retrieval: Literal["click", "click_minus_bad"] | None = Field(
        None, description="click: the paper's click cosine; click_minus_bad: cos_click - cos_bad "
        "as one inner product of [c, -b] . [c, b] (exact MIPS, twice the dimension); None: the "
        "MOBIUS run's mode decides (v2: click_minus_bad, paper: click), click outside a run")

    @model_validator(mode="after")
    def _bad_vector_needed(self) -> "MobiusConfig":
        if self.retrieval == "click_minus_bad" and self.num_vectors < 3:
            raise ValueError("model.retrieval: click_minus_bad needs num_vectors: 3 (a bad vector)")
        return self


@register("mobius", MobiusConfig)
class Mobius(TwoTowerModel):
    def __init__(self, cfg: MobiusConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.num_vectors = cfg.num_vectors
        out = cfg.output_dim * cfg.num_vectors
        self.query_tower = MLP(self.field_width(self.query_fields), cfg.hidden, out, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.hidden, out, cfg.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # [B, V*D] -> [B, V, D], each vector normalised on its own
        return l2_normalize(x.reshape(x.shape[0], self.num_vectors, self.cfg.output_dim))

    def encode_query(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.query_fields), dim=-1)
        return self._split(self.query_tower(x))  # [B, V, D]

    def encode_item(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        return self._split(self.item_tower(x))  # [N, V, D]

    def class_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[B, V, D] x [B, V, D] -> [B, V]: per-class cosine of row-aligned pairs."""
        return (q * i).sum(-1)

    def class_logits_matrix(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[M, V, D] x [N, V, D] -> [M, N, V]: per-class cosines of the whole cross join."""
        return torch.einsum("mvd,nvd->mnv", q, i)

    def class_logit_planes(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[M, V, D] x [N, V, D] -> [V, M, N]: per-class cosines of the whole cross join, class
        axis first — one batched matrix product per class (differentiable)."""
        return torch.bmm(q.transpose(0, 1), i.permute(1, 2, 0))

    def click_probability(self, q: torch.Tensor, i: torch.Tensor, temperature: float,
                          planes: torch.Tensor | None = None) -> torch.Tensor:
        """[M, V, D] x [N, V, D] -> [M, N]: softmax probability of the click class (the CTR) at
        the objective's ``temperature`` (from ``planes`` [V, M, N] when already computed). The
        softmax runs over the class axis laid out first: several times faster on CPU than a
        softmax over a trailing axis of size 3."""
        if planes is None:
            planes = self.class_logit_planes(q, i)
        return (planes / temperature).softmax(0)[CLICK]

    # the generic interface (logits, in-batch metrics) uses the click vectors
    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return q[:, CLICK] @ i[:, CLICK].T

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (q[:, CLICK] * i[:, CLICK]).sum(-1)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        if self.cfg.retrieval == "click_minus_bad":
            return torch.cat([q[:, CLICK], -q[:, BAD]], dim=-1)[:, None]  # [B, 1, 2D]
        return q[:, CLICK:CLICK + 1]  # [B, 1, D]

    def retrieval_item(self, i: torch.Tensor) -> torch.Tensor:
        if self.cfg.retrieval == "click_minus_bad":
            return torch.cat([i[:, CLICK], i[:, BAD]], dim=-1)  # [N, 2D]
        return i[:, CLICK]  # [N, D]

    def contract(self) -> dict:
        minus_bad = self.cfg.retrieval == "click_minus_bad"
        return {**super().contract(), "query_vectors": [CLICK], "item_vector": CLICK,
                "classes": list(CLASSES[:self.num_vectors]), "retrieval_class": "click",
                "vectors_per_side": self.num_vectors, "retrieval": self.cfg.retrieval or "click",
                "dim": self.cfg.output_dim * (2 if minus_bad else 1),
                "score": ("cos(click) - cos(bad) = [c_q, -b_q] . [c_a, b_a]" if minus_bad
                          else "cos(click)")}
