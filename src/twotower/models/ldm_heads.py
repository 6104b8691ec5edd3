"""Two retrieval heads over one model's towers: what LDM trains and serves.

Alibaba's learning of the ranker's order (LDM; MISSION.md section E): one head learns the
ranker's order from the ranking-stage log, a second head sharing the lower layers learns from
in-batch random negatives against sample-selection bias, and retrieval uses one of them or a mix.

The lower layers are any registered model whose similarity is the first vectors' dot product
(``plain_similarity``: DSSM, SENet, ResNet, ...), built from ``base`` and ``base_fields``. Each
head is one linear map per side on the base's output vector (re-normalised for a cosine base).
``encode_query`` / ``encode_item`` return both heads, ``[B, 2, D]``: vector 0 the ranker head,
vector 1 the random-negative head. ``logits`` / ``pair_logits`` are the configured retrieval
score; the objective reaches a single head with ``head_logits`` / ``head_pair_logits``. A mix
``m`` serves ``[sqrt(m) q_r, sqrt(1-m) q_n]`` against ``[sqrt(m) i_r, sqrt(1-m) i_n]``, whose inner
product is ``m <q_r, i_r> + (1 - m) <q_n, i_n>`` (unit length when the heads are).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from twotower.config import ModelConfig, model_config_class
from twotower.errors import ConfigError
from twotower.models.base import TwoTowerModel, build_model, register
from twotower.towers.embedding import FeatureSchema, side_fields
from twotower.towers.mlp import l2_normalize
from twotower.types import Features, Side, Similarity

HEADS = ("ranker", "random")


class TwoHeadConfig(ModelConfig):
    name: str = "ldm_heads"
    base: str = Field("dssm", description="the model whose towers are the shared lower layers")
    base_fields: dict[str, Any] = Field(default_factory=dict, description="the base model's own "
                                        "config fields besides the shared ones")
    retrieval: Literal["ranker", "random", "mix"] = "mix"
    mix: float = Field(0.5, ge=0, le=1, description="ranker head's share of the mixed score")


def base_config(cfg: TwoHeadConfig) -> ModelConfig:
    if cfg.base == "ldm_heads":
        raise ConfigError("model ldm_heads: the base model cannot be ldm_heads itself")
    shared = {k: getattr(cfg, k) for k in ModelConfig.model_fields if k != "name"}
    try:
        return model_config_class(cfg.base).model_validate({**shared, **cfg.base_fields,
                                                            "name": cfg.base})
    except ValueError as err:
        raise ConfigError(f"model ldm_heads: base model {cfg.base!r}: {err}") from None


@register("ldm_heads", TwoHeadConfig)
class TwoHeadModel(TwoTowerModel):
    plain_similarity = False

    def __init__(self, cfg: TwoHeadConfig, schema: FeatureSchema):
        nn.Module.__init__(self)  # the base owns the field embeddings: no second table set
        self.cfg, self.schema = cfg, schema
        self.query_fields = side_fields(schema, Side.QUERY)
        self.item_fields = side_fields(schema, Side.ITEM)
        self.base = build_model(base_config(cfg), schema)
        if not getattr(self.base, "plain_similarity", False) or self.base.scores_are_logits:
            raise ConfigError(f"objective ldm: model {cfg.base!r} does not score by the first "
                              "vectors' dot product; its heads need a plain two-tower model "
                              "(dssm, senet, resnet, ...)")
        self.similarity = self.base.similarity
        d = self.base.cfg.output_dim
        self.query_heads = nn.ModuleList(nn.Linear(d, d) for _ in HEADS)
        self.item_heads = nn.ModuleList(nn.Linear(d, d) for _ in HEADS)

    @property
    def embedding(self):
        return self.base.embedding

    def _heads(self, x: torch.Tensor, heads: nn.ModuleList) -> torch.Tensor:
        out = torch.stack([h(x) for h in heads], dim=1)  # [B, 2, D]
        return l2_normalize(out) if self.similarity == Similarity.COSINE else out

    def encode_query(self, features: Features) -> torch.Tensor:
        return self._heads(self.base.encode_query(features)[:, 0], self.query_heads)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._heads(self.base.encode_item(features)[:, 0], self.item_heads)

    # ---- one head, for the objective
    @staticmethod
    def head_logits(q: torch.Tensor, i: torch.Tensor, head: str) -> torch.Tensor:
        v = HEADS.index(head)
        return q[:, v] @ i[:, v].T  # [B, N]

    @staticmethod
    def head_pair_logits(q: torch.Tensor, i: torch.Tensor, head: str) -> torch.Tensor:
        v = HEADS.index(head)
        return (q[:, v] * i[:, v]).sum(-1)  # [B]

    # ---- the configured retrieval score
    def _weights(self) -> tuple[float, float]:
        return {"ranker": (1.0, 0.0), "random": (0.0, 1.0),
                "mix": (self.cfg.mix, 1.0 - self.cfg.mix)}[self.cfg.retrieval]

    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        a, b = self._weights()
        return a * self.head_logits(q, i, "ranker") + b * self.head_logits(q, i, "random")

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        a, b = self._weights()
        return a * self.head_pair_logits(q, i, "ranker") + b * self.head_pair_logits(q, i, "random")

    def _served(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2, D] -> [B, D'] served vectors of the configured head (or the mix)."""
        if self.cfg.retrieval != "mix":
            return x[:, HEADS.index(self.cfg.retrieval)]
        return torch.cat([math.sqrt(self.cfg.mix) * x[:, 0], math.sqrt(1 - self.cfg.mix) * x[:, 1]], -1)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        return self._served(q).unsqueeze(1)  # [B, 1, D']

    def retrieval_item(self, i: torch.Tensor) -> torch.Tensor:
        return self._served(i)  # [N, D']

    def contract(self) -> dict:
        d = self.base.cfg.output_dim
        return {**self.base.contract(), "model": self.registered_name, "base_model": self.cfg.base,
                "dim": 2 * d if self.cfg.retrieval == "mix" else d, "query_vectors": "all",
                "item_vector": 0, "retrieval_head": self.cfg.retrieval,
                "retrieval_mix": self.cfg.mix if self.cfg.retrieval == "mix" else None}
