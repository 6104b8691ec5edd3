"""Shared types: the training ``Batch``, the ``Similarity``, ``Side`` and ``FeatureKind`` enums,
the ``FieldSpec`` a model embeds a feature by, and the shape letters.

Shape letters used in comments and docstrings everywhere:
``B`` batch, ``N`` candidates, ``V`` vectors per side, ``D`` dimension, ``K`` top-k,
``L`` sequence length.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

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


class FeatureKind(str, enum.Enum):
    """How an input column is encoded."""

    #: an id fitted into a vocabulary (min count, out-of-vocabulary bucket)
    CATEGORICAL = "categorical"
    #: an id hashed into ``num_buckets`` (very large cardinalities, no vocabulary kept)
    HASHED = "hashed"
    #: free text: word and/or character-3-gram hashing (as in Que2Search), mean-pooled
    TEXT = "text"
    #: a list of ids (history), padded/truncated to ``max_len`` with a mask, mean-pooled
    SEQUENCE = "sequence"
    #: a number, standardised with the training mean and standard deviation
    DENSE = "dense"


@dataclass(frozen=True)
class FieldSpec:
    """What a model needs to know about one feature to embed it."""

    kind: FeatureKind
    side: Side
    cardinality: int  # embedding rows (0 for dense)
    table: str  # name of the table it reads (the vocabulary's owner)
    dim: int  # embedding dimension

    def to_json(self) -> dict:
        d = asdict(self)
        d["kind"], d["side"] = self.kind.value, self.side.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FieldSpec":
        return cls(FeatureKind(d["kind"]), Side(d["side"]), d["cardinality"], d["table"], d["dim"])


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
