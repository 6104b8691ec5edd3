"""Field embeddings: one table per vocabulary, shared by every feature that uses it.

A watch history declared with ``vocab_from: item_id`` reads the item id's table, so a user is
represented by (the mean of) the very vectors the item tower learns for what they watched.
Sequences and texts are mean-pooled over their non-padding positions (``F.embedding_bag`` with
``padding_idx=0``: no Python loop, no [B, L, E] tensor materialised). On a CPU ``mean_bag``
pools the non-padding ids as flat bags (PyTorch's fast kernel) with a transposed-bag backward:
about twice as fast as ``padding_idx`` forward and backward, same values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.types import FeatureKind, Features, FieldSpec, Side


class _MeanBag(torch.autograd.Function):
    """``F.embedding_bag(ids, weight, mode="mean", padding_idx=0)``, computed faster on a CPU.

    Forward drops the padding positions and pools the rest as flat bags (``ids[ids != 0]`` with
    per-row offsets): without ``padding_idx`` PyTorch takes its vectorised (FBGEMM) kernel, twice
    as fast. Backward is the same pooling transposed: the weight-gradient row of id ``v`` is the
    sum, over the positions holding ``v``, of ``grad[bag] / length[bag]`` — one sort of the ids
    and one summing embedding bag over ``grad``, instead of PyTorch's slower per-id loop. Padding
    positions and all-padding rows contribute nothing, as in PyTorch's own backward.
    """

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        keep = ids != 0  # [B, L]
        length = keep.sum(dim=1)  # [B]
        flat = ids[keep]  # [P] non-padding ids, row by row
        offsets = (length.cumsum(0) - length).to(flat.dtype)
        ctx.save_for_backward(flat, length)
        ctx.num_weights, ctx.weight_dtype = weight.shape[0], weight.dtype
        return F.embedding_bag(flat, weight, offsets, mode="mean")  # empty bag -> zeros

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, length = ctx.saved_tensors
        per_bag = grad.to(ctx.weight_dtype) / length.clamp_min(1).to(ctx.weight_dtype)[:, None]
        bag = torch.repeat_interleave(torch.arange(len(length), device=flat.device), length)  # [P]
        sorted_ids, order = torch.sort(flat)
        counts = torch.bincount(sorted_ids, minlength=ctx.num_weights)  # positions per id
        offsets = counts.cumsum(0) - counts
        return None, F.embedding_bag(bag[order], per_bag, offsets, mode="sum")  # [V, E]


def mean_bag(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of the ``weight`` rows of each row of ``ids[B, L]`` over its non-zero ids -> [B, E]
    (zeros for an all-padding row); ``F.embedding_bag(..., mode="mean", padding_idx=0)``."""
    if weight.device.type == "cpu":
        return _MeanBag.apply(ids, weight)
    return F.embedding_bag(ids, weight, mode="mean", padding_idx=0)


#: feature name -> FieldSpec, in config order
FeatureSchema = dict[str, FieldSpec]


def side_fields(schema: FeatureSchema, side: Side) -> list[str]:
    return [n for n, s in schema.items() if s.side == side]


class FieldEmbedding(nn.Module):
    """Embeds every feature of a schema; ``forward(features, names)`` -> list of [B, E_f]."""

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self.schema = dict(schema)
        self.tables = nn.ModuleDict()
        self.dense = nn.ModuleDict()
        for name, spec in schema.items():
            if spec.kind == FeatureKind.DENSE:
                self.dense[name] = nn.Linear(1, spec.dim)
            elif spec.table == name:
                table = nn.Embedding(spec.cardinality, spec.dim, padding_idx=0)
                nn.init.normal_(table.weight, std=0.05)
                with torch.no_grad():
                    table.weight[0].zero_()
                self.tables[name] = table
        for name, spec in schema.items():
            if spec.kind != FeatureKind.DENSE and spec.table not in self.tables:
                raise ValueError(f"feature {name!r} reads table {spec.table!r}, which no feature owns")

    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = self.schema[name]
        if spec.kind == FeatureKind.DENSE:
            return self.dense[name](x.float().unsqueeze(-1))  # [B] -> [B, E]
        weight = self.tables[spec.table].weight
        if x.dim() == 2:  # [B, L] -> mean over non-padding positions -> [B, E]
            return mean_bag(x, weight)
        return F.embedding(x, weight, padding_idx=0)  # [B] -> [B, E]

    def forward(self, features: Features, names: list[str]) -> list[torch.Tensor]:
        return [self.embed(n, features[n]) for n in names]

    def stacked(self, features: Features, names: list[str]) -> torch.Tensor:
        """[B, F, E] — requires every named field to share one embedding dimension."""
        return torch.stack(self(features, names), dim=1)
