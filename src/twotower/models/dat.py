"""Dual Augmented Two-tower (DAT): each tower also sees a learned vector of the other side.

Yu et al., "A Dual Augmented Two-tower Model for Online Large-scale Recommendation" (DLP-KDD 2021,
Meituan). Each query (keyed by ``query_key``, e.g. the user id) and each item (``item_key``) owns an
augmented vector ``a_u`` / ``a_v`` that is concatenated into its own tower's input. The
**adaptive-mimic** loss makes ``a_u`` fit the item tower's output ``p_v`` (and ``a_v`` fit ``p_u``)
on positive pairs only, with a stop-gradient on the target, so the towers' outputs are not pulled
toward the augmented vectors: information about the other side flows in only through ``a``.
The optional **category alignment** loss (``category_field``) matches the covariance of the item
vectors of the batch's major category with that of each minor category (Frobenius distance), to
transfer what is learned on data-rich categories to sparse ones. Both losses are functions in
``objectives.losses``, added to every objective by ``objectives.auxiliary``.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from twotower.config import FeatureKind, ModelConfig
from twotower.errors import ConfigError
from twotower.models.base import TwoTowerModel, register
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.types import Features, Side

_ID_KINDS = (FeatureKind.CATEGORICAL, FeatureKind.HASHED)


class DATConfig(ModelConfig):
    name: str = "dat"
    query_key: str | None = Field(None, description="query feature keying a_u; default: the first "
                                  "categorical query feature")
    item_key: str | None = Field(None, description="item feature keying a_v; default: the first "
                                 "categorical item feature")
    mimic_weight: float = Field(1.0, ge=0, description="weight of the adaptive-mimic loss")
    category_field: str | None = Field(None, description="categorical item feature for the "
                                       "category alignment loss; none: loss off")
    category_weight: float = Field(1.0, ge=0)


def _pick_key(schema: FeatureSchema, names: list[str], key: str | None, what: str) -> str:
    if key is not None:
        if key not in names or schema[key].kind not in _ID_KINDS:
            raise ConfigError(f"model.{what}: {key!r} is not a categorical/hashed feature of that "
                              f"side (candidates: {[n for n in names if schema[n].kind in _ID_KINDS]})")
        return key
    for n in names:
        if schema[n].kind in _ID_KINDS:
            return n
    raise ConfigError(f"model.{what}: DAT needs a categorical feature on that side to key the "
                      "augmented vectors")


@register("dat", DATConfig)
class DualAugmentedTwoTower(TwoTowerModel):
    def __init__(self, cfg: DATConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.query_key = _pick_key(schema, self.query_fields, cfg.query_key, "query_key")
        self.item_key = _pick_key(schema, self.item_fields, cfg.item_key, "item_key")
        if cfg.category_field is not None and (cfg.category_field not in self.item_fields
                                               or schema[cfg.category_field].kind not in _ID_KINDS):
            raise ConfigError(f"model.category_field: {cfg.category_field!r} is not a categorical "
                              "item feature")
        d = cfg.output_dim
        self.query_aug = nn.Embedding(schema[self.query_key].cardinality, d)
        self.item_aug = nn.Embedding(schema[self.item_key].cardinality, d)
        for table in (self.query_aug, self.item_aug):
            nn.init.normal_(table.weight, std=0.05)
        self.query_tower = MLP(self.field_width(self.query_fields) + d, cfg.hidden, d, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields) + d, cfg.hidden, d, cfg.dropout)

    def augmented(self, features: Features, side: Side) -> torch.Tensor:
        if side == Side.QUERY:
            return self.query_aug(features[self.query_key])
        return self.item_aug(features[self.item_key])

    def encode_query(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.query_fields)
                      + [self.augmented(features, Side.QUERY)], dim=-1)
        return l2_normalize(self.query_tower(x)).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields)
                      + [self.augmented(features, Side.ITEM)], dim=-1)
        return l2_normalize(self.item_tower(x)).unsqueeze(1)
