"""YouTubeDNN candidate generation.

Covington et al., "Deep Neural Networks for YouTube Recommendations" (RecSys 2016). The user
tower averages the watch history's item embeddings (the item id's own table, ``vocab_from``),
concatenates the user's side features and maps them through a ReLU MLP; the item side is an item
embedding (+ its side fields) projected to the output dimension — the softmax weights. Trained
with the sampled / in-batch softmax and the log-Q correction of the task (``objective``).

``SequenceModelConfig`` and ``UserSideMixin`` are shared by the sequence models
(MIND, ComiRec, SDM, PDN): which query field is the behaviour sequence, the others being side
features.
"""
from __future__ import annotations

import torch
from pydantic import Field

from twotower.config import FeatureKind, ModelConfig
from twotower.errors import ConfigError
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features


class SequenceModelConfig(ModelConfig):
    history: str = Field("history", description="query feature holding the behaviour sequence "
                         "(kind: sequence, vocab_from: the item id)")
    item_hidden: list[int] = Field(default_factory=list,
                                   description="hidden layers of the item tower (default: a projection)")


class UserSideMixin:
    """Helpers for a model whose query side is (behaviour sequence, user side features)."""

    def _split_query_fields(self: TwoTowerModel, *sequences: str) -> list[str]:
        for name in sequences:
            if name not in self.schema:
                raise ConfigError(f"model {self.registered_name}: query feature {name!r} not found "
                                  f"(query features: {', '.join(self.query_fields)})")
            if self.schema[name].kind != FeatureKind.SEQUENCE:
                raise ConfigError(f"model {self.registered_name}: feature {name!r} must be kind: sequence")
        return [n for n in self.query_fields if n not in sequences]

    def _side(self: TwoTowerModel, features: Features, names: list[str], batch: int,
              device: torch.device) -> torch.Tensor:
        if not names:
            return torch.zeros(batch, 0, device=device)
        return torch.cat(self.embedding(features, names), dim=-1)

    def _item_vector(self: TwoTowerModel, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        return l2_normalize(self.item_tower(x)).unsqueeze(1)  # [N, 1, D]


@register("youtubednn", SequenceModelConfig)
class YouTubeDNN(UserSideMixin, TwoTowerModel):
    def __init__(self, cfg: SequenceModelConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.side_fields = self._split_query_fields(cfg.history)
        width = self.schema[cfg.history].dim + self.field_width(self.side_fields)
        self.user_tower = MLP(width, cfg.hidden, cfg.output_dim, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def encode_query(self, features: Features) -> torch.Tensor:
        hist = self.embedding.embed(self.cfg.history, features[self.cfg.history])  # mean-pooled
        side = self._side(features, self.side_fields, hist.shape[0], hist.device)
        return l2_normalize(self.user_tower(torch.cat([hist, side], -1))).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)
