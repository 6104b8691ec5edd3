"""A small multi-task ranker: the teacher that DMTL distills into a two-tower model.

Zhao et al., "Distillation based Multi-task Learning: A Candidate Generation Model for Improving
Reading Duration" (Tencent, 2021).

Unlike a two-tower model, the ranker sees each (query, item) pair together: besides both sides'
field embeddings it reads their cross features — the element-wise product of the two sides'
projected embeddings and a DCN cross network over everything — the interactions retrieval cannot
have. A shared bottom feeds two heads: the CTR logit and the engagement signal (e.g. dwell time
or conversion). Its ``teacher_scores`` (log p(click) + log engagement) are the soft labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.towers.cross import CrossNetwork
from twotower.towers.embedding import FeatureSchema, FieldEmbedding, side_fields
from twotower.towers.mlp import MLP
from twotower.types import Features, Side


class MultiTaskRanker(nn.Module):
    """Pairwise scorer: ``forward(query, item) -> (ctr_logit[B], engagement_logit[B])`` for
    row-aligned pairs; engagement is a logit (a rate, or a duration squashed to [0, 1])."""

    def __init__(self, schema: FeatureSchema, hidden: list[int] | None = None, cross_dim: int = 32):
        super().__init__()
        self.schema = dict(schema)
        self.query_fields = side_fields(schema, Side.QUERY)
        self.item_fields = side_fields(schema, Side.ITEM)
        self.embedding = FieldEmbedding(schema)
        q_width = sum(schema[n].dim for n in self.query_fields)
        i_width = sum(schema[n].dim for n in self.item_fields)
        self.query_proj = nn.Linear(q_width, cross_dim)
        self.item_proj = nn.Linear(i_width, cross_dim)
        width = q_width + i_width + cross_dim
        self.cross = CrossNetwork(width, layers=2)
        hidden = hidden or [64]
        self.bottom = MLP(width, hidden[:-1], hidden[-1])
        self.ctr_head = nn.Linear(hidden[-1], 1)
        self.engagement_head = nn.Linear(hidden[-1], 1)

    def forward(self, query: Features, item: Features) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.embed_query(query), self.embed_item(item))

    def embed_query(self, query: Features) -> torch.Tensor:
        return torch.cat(self.embedding(query, self.query_fields), dim=-1)  # [B, Eq]

    def embed_item(self, item: Features) -> torch.Tensor:
        return torch.cat(self.embedding(item, self.item_fields), dim=-1)  # [B, Ei]

    def heads(self, q: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-aligned embedded pairs [P, Eq] x [P, Ei] -> (ctr_logit[P], engagement_logit[P])."""
        cross = self.query_proj(q) * self.item_proj(i)  # [P, C]: query x item interactions
        h = F.relu(self.bottom(self.cross(torch.cat([q, i, cross], dim=-1))))
        return self.ctr_head(h)[:, 0], self.engagement_head(h)[:, 0]

    def grid_scores(self, query: Features, item: Features, columns: torch.Tensor,
                    engagement_weight: float = 1.0) -> torch.Tensor:
        """Teacher scores [B, M] of (row b's query, item ``columns[b, m]``): each side embedded
        once, only the pair layers run B x M times (``pair_grid`` would embed every pair)."""
        b, m = columns.shape
        q, i = self.embed_query(query), self.embed_item(item)
        rows = torch.arange(b, device=columns.device).repeat_interleave(m)
        ctr, engagement = self.heads(q[rows], i[columns.reshape(-1)])
        return (F.logsigmoid(ctr) + engagement_weight * F.logsigmoid(engagement)).reshape(b, m)

    def teacher_scores(self, query: Features, item: Features, engagement_weight: float = 1.0) -> torch.Tensor:
        """log p(click) + w * log p(engagement): the log of CTR x engagement, what DMTL distills."""
        ctr, engagement = self(query, item)
        return F.logsigmoid(ctr) + engagement_weight * F.logsigmoid(engagement)


def pair_grid(query: Features, item: Features, columns: torch.Tensor) -> tuple[Features, Features]:
    """The features of pairs (row b's query, item ``columns[b, m]``) flattened to ``[B * M]``, so a
    pairwise model scores M candidates of every row in one call."""
    b, m = columns.shape
    rows = torch.arange(b, device=columns.device).repeat_interleave(m)
    flat = columns.reshape(-1)
    return {k: v[rows] for k, v in query.items()}, {k: v[flat] for k, v in item.items()}
