"""The model interface every two-tower variant implements, and the registry of models by name.

A model composes a query tower and an item tower and exposes exactly:

* ``encode_query(features) -> Tensor[B, V, D]`` and ``encode_item(features) -> Tensor[N, V, D]``
  (V = vectors per side: 1 for DSSM, K interests for MIND, 3 for MOBIUS);
* ``logits(q, i) -> Tensor[B, N]``: the training score of every query against every item;
* ``pair_logits(q, i) -> Tensor[B]``: the score of row-aligned pairs;
* ``retrieval_query(q) -> [B, Vq, D]`` / ``retrieval_item(i) -> [N, D]``: the vectors served by the
  index, whose inner product (max over the query's vectors) ranks items at retrieval time;
* ``contract()``: the similarity contract written into the run folder.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from twotower.config import ModelConfig
from twotower.errors import ConfigError
from twotower.towers.embedding import FeatureSchema, FieldEmbedding, side_fields
from twotower.types import Features, Side, Similarity

_REGISTRY: dict[str, tuple[type["TwoTowerModel"], type[ModelConfig]]] = {}


def register(name: str, config_class: type[ModelConfig] = ModelConfig) -> Callable:
    """Class decorator: make a model selectable as ``model.name: <name>`` in a config."""

    def wrap(cls: type["TwoTowerModel"]) -> type["TwoTowerModel"]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = (cls, config_class)
        cls.registered_name = name
        return cls

    return wrap


def registered_models() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type["TwoTowerModel"], type[ModelConfig]]:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; known models: "
                          f"{', '.join(registered_models())}")
    return _REGISTRY[name]


def model_config_class(name: str) -> type[ModelConfig]:
    if name not in _REGISTRY:
        # a ValueError inside pydantic validation is reported as 'model: ...'
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(registered_models())}")
    return _REGISTRY[name][1]


def build_model(cfg: ModelConfig, schema: FeatureSchema) -> "TwoTowerModel":
    cls, config_class = _lookup(cfg.name)
    if not isinstance(cfg, config_class):
        cfg = config_class.model_validate(cfg.model_dump())
    return cls(cfg, schema)


class TwoTowerModel(nn.Module):
    """Base class: field embeddings shared by both towers, cosine scoring with a temperature."""

    registered_name: str = ""
    similarity: Similarity = Similarity.COSINE

    def __init__(self, cfg: ModelConfig, schema: FeatureSchema):
        super().__init__()
        self.cfg = cfg
        self.schema = schema
        self.query_fields = side_fields(schema, Side.QUERY)
        self.item_fields = side_fields(schema, Side.ITEM)
        self.embedding = FieldEmbedding(schema)
        self.temperature = cfg.temperature

    def field_width(self, names: list[str]) -> int:
        return sum(self.schema[n].dim for n in names)

    # ---- the interface
    def encode_query(self, features: Features) -> torch.Tensor:
        raise NotImplementedError

    def encode_item(self, features: Features) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[B, V, D] x [N, V, D] -> [B, N]: cosine of the first vectors over the temperature."""
        return (q[:, 0] / self.temperature) @ i[:, 0].T  # scale [B, D], not [B, N]

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[B, V, D] x [B, V, D] -> [B]: scores of row-aligned (query, item) pairs."""
        return (q[:, 0] * i[:, 0]).sum(-1) / self.temperature

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        """Query vectors searched in the index: [B, Vq, D] (each searched, results max-merged)."""
        return q

    def retrieval_item(self, i: torch.Tensor) -> torch.Tensor:
        """Item vectors stored in the index: [N, D]."""
        return i[:, 0]

    def contract(self) -> dict:
        """How retrieval scores are computed — the index and the service refuse a mismatch."""
        return {
            "model": self.registered_name,
            "metric": "inner_product",
            "normalized": self.similarity == Similarity.COSINE,
            "similarity": self.similarity.value,
            "temperature": self.temperature,
            "query_vectors": "all",
            "item_vector": 0,
            "dim": self.cfg.output_dim,
            "merge": "max",
        }
