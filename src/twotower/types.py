"""Shared types: the training ``Batch``, the ``Similarity`` enum and the shape letters.

Shape letters used in comments and docstrings everywhere:
``B`` batch, ``N`` candidates, ``V`` vectors per side, ``D`` dimension, ``K`` top-k,
``L`` sequence length.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

#: One tower's input: feature name -> tensor. Categorical ids are LongTensor[B], sequences and
#: token lists LongTensor[B, L] (0 = padding), dense numbers FloatTensor[B].
Features = dict[str, torch.Tensor]


class Similarity(str, enum.Enum):
    """How a query vector and an item vector are compared at retrieval time."""

    #: cosine: both sides are L2-normalised, so the inner product is the cosine.
    COSINE = "cosine"
    #: raw inner product (maximum inner product search).
    INNER_PRODUCT = "inner_product"


class Side(str, enum.Enum):
    """Which tower a feature feeds."""

    QUERY = "query"
    ITEM = "item"


@dataclass
class Batch:
    """A batch of training examples, already encoded to tensors.

    ``item_ids`` are the encoded item indices (vocabulary positions of the item id feature): the
    objectives use them to find accidental hits and to update the frequency estimator.
    ``label`` is 1 for click, 0 for shown-not-clicked (None when every row is a positive);
    ``weight`` is the optional per-example sample weight.
    """

    query: Features
    item: Features
    item_ids: torch.Tensor  # LongTensor[B]
    label: torch.Tensor | None = None  # FloatTensor[B]
    weight: torch.Tensor | None = None  # FloatTensor[B]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        def move(d: Features) -> Features:
            return {k: v.to(device, non_blocking=True) for k, v in d.items()}

        return Batch(
            query=move(self.query),
            item=move(self.item),
            item_ids=self.item_ids.to(device, non_blocking=True),
            label=None if self.label is None else self.label.to(device, non_blocking=True),
            weight=None if self.weight is None else self.weight.to(device, non_blocking=True),
            extra=move(self.extra),
        )
