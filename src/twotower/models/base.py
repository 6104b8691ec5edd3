"""The model interface every two-tower variant implements, and the registry of models by name.

A model composes a query tower and an item tower and exposes exactly:

* ``encode_query(features) -> Tensor[B, V, D]`` and ``encode_item(features) -> Tensor[N, V, D]``
  (V = vectors per side: 1 for DSSM, K interests for MIND, 3 for MOBIUS);
* ``logits(q, i) -> Tensor[B, N]``: the similarity of every query to every item (raw: the
  objective divides by its temperature);
* ``pair_logits(q, i) -> Tensor[B]``: the similarity of row-aligned pairs;
* ``retrieval_query(q) -> [B, Vq, D]`` / ``retrieval_item(i) -> [N, D]``: the vectors served by the
  index, whose inner product (max over the query's vectors) ranks items at retrieval time;
* ``contract()``: the similarity contract written into the run folder.

A model that keeps the base class's first-vector dot product declares ``plain_similarity``
(derived: overriding ``logits`` turns it off), which lets the objective take its fused in-batch
softmax path.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from twotower import registry
from twotower.config import ModelConfig, model_config_class
from twotower.errors import ConfigError
from twotower.towers.embedding import FeatureSchema, FieldEmbedding, side_fields
from twotower.types import Features, Side, Similarity

__all__ = ["TwoTowerModel", "build_model", "model_config_class", "register", "registered_models"]


def register(name: str, config_class: type[ModelConfig] = ModelConfig) -> Callable:
    """Class decorator: make a model selectable as ``model.name: <name>`` in a config."""

    def wrap(cls: type["TwoTowerModel"]) -> type["TwoTowerModel"]:
        registry.add(registry.models, name, (cls, config_class), "model name")
        cls.registered_name = name
        return cls

    return wrap


def registered_models() -> list[str]:
    return registry.model_names()


def _lookup(name: str) -> tuple[type["TwoTowerModel"], type[ModelConfig]]:
    entry = registry.model_entry(name)
    if entry is None:
        raise ConfigError(f"model.name: unknown model {name!r}; known models: "
                          f"{', '.join(registered_models())}")
    return entry


def build_model(cfg: ModelConfig, schema: FeatureSchema) -> "TwoTowerModel":
    cls, config_class = _lookup(cfg.name)
    if not isinstance(cfg, config_class):
        cfg = config_class.model_validate(cfg.model_dump())
    return cls(cfg, schema)


class TwoTowerModel(nn.Module):
    """Base class: field embeddings shared by both towers, cosine of the first vectors."""

    registered_name: str = ""
    similarity: Similarity = Similarity.COSINE
    #: True when ``logits`` is the base class's first-vector dot product, so the objective may
    #: compute the in-batch softmax from ``q[:, 0]`` and ``i[:, 0]`` directly (fused path).
    #: A subclass that overrides ``logits`` is not plain unless it says so.
    plain_similarity: bool = True
    #: True when ``logits`` already are training logits with the model's own scale (PDN's path
    #: log-scores): the objective then does not divide them by its temperature.
    scores_are_logits: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "logits" in cls.__dict__ and "plain_similarity" not in cls.__dict__:
            cls.plain_similarity = False

    def __init__(self, cfg: ModelConfig, schema: FeatureSchema):
        super().__init__()
        self.cfg = cfg
        self.schema = schema
        self.query_fields = side_fields(schema, Side.QUERY)
        self.item_fields = side_fields(schema, Side.ITEM)
        self.embedding = FieldEmbedding(schema)

    def field_width(self, names: list[str]) -> int:
        return sum(self.schema[n].dim for n in names)

    # ---- the interface
    def encode_query(self, features: Features) -> torch.Tensor:
        raise NotImplementedError

    def encode_item(self, features: Features) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[B, V, D] x [N, V, D] -> [B, N]: inner product (cosine) of the first vectors."""
        return q[:, 0] @ i[:, 0].T

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[B, V, D] x [B, V, D] -> [B]: similarities of row-aligned (query, item) pairs."""
        return (q[:, 0] * i[:, 0]).sum(-1)

    def retrieval_query(self, q: torch.Tensor) -> torch.Tensor:
        """Query vectors searched in the index: [B, Vq, D] (each searched, results max-merged)."""
        return q

    def retrieval_item(self, i: torch.Tensor) -> torch.Tensor:
        """Item vectors stored in the index: [N, D]."""
        return i[:, 0]

    def contract(self) -> dict:
        """How retrieval scores are computed — the index and the service refuse a mismatch.
        (The training temperature is the objective's; the run's export adds it.)"""
        return {
            "model": self.registered_name,
            "metric": "inner_product",
            "normalized": self.similarity == Similarity.COSINE,
            "similarity": self.similarity.value,
            "query_vectors": "all",
            "item_vector": 0,
            "dim": self.cfg.output_dim,
            "merge": "max",
        }
