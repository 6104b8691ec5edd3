"""ComiRec: Controllable Multi-Interest Framework for Recommendation.

Cen et al., KDD 2020. Two multi-interest extractors over the behaviour sequence — ComiRec-SA
(self-attentive: A = softmax(W2 tanh(W1 H^T)), V = A H) and ComiRec-DR (dynamic routing with one
bilinear map per interest) — trained with the interest closest to the target (hard label-aware
attention, p -> inf; ``hard_attention: false`` uses MIND's soft attention instead), served with
the K interests searched and merged. ``controllable_aggregate`` is the paper's aggregation module:
from the merged candidates it greedily picks the items maximising
Q(u, S) = sum_{i in S} f(u, i) + lambda * sum_{i != j in S} g(i, j), g = category diversity.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from twotower.models.base import register
from twotower.models.mind import MultiInterestConfig, MultiInterestModel
from twotower.models.youtubednn import UserSideMixin
from twotower.towers.capsule import CapsuleRouting
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import SelfAttentiveInterests, embed_sequence
from twotower.types import Features


class ComiRecConfig(MultiInterestConfig):
    hard_attention: bool = Field(True, description="train with the closest interest (paper)")
    routing_iterations: int = Field(3, gt=0, description="ComiRec-DR only")


class _ComiRec(UserSideMixin, MultiInterestModel):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        # the paper reads the behaviour sequence only; other query fields (if any) shift every
        # interest by a learned projection of the user's side features
        self.side_fields = self._split_query_fields(cfg.history)
        self.side_proj = (torch.nn.Linear(self.field_width(self.side_fields), cfg.output_dim)
                          if self.side_fields else None)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    def with_side(self, v: torch.Tensor, features: Features) -> torch.Tensor:
        if self.side_proj is None:
            return v
        side = self._side(features, self.side_fields, v.shape[0], v.device)
        return v + self.side_proj(side).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)


@register("comirec_sa", ComiRecConfig)
class ComiRecSA(_ComiRec):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.proj = torch.nn.Linear(self.schema[cfg.history].dim, cfg.output_dim)
        self.extractor = SelfAttentiveInterests(cfg.output_dim, cfg.num_interests, cfg.max_len)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        v = self.with_side(self.extractor(self.proj(e), mask), features)  # [B, K, D]
        out = l2_normalize(v)
        # an empty history has no interests but the first (a bias-only vector)
        keep = mask.any(1, keepdim=True) | (torch.arange(v.shape[1], device=v.device) == 0)
        if not mask.any(1).all():
            out = torch.where(mask.any(1)[:, None, None], out,
                              l2_normalize(self.proj.bias).expand_as(out))
        return out * keep.unsqueeze(-1).to(out.dtype)


@register("comirec_dr", ComiRecConfig)
class ComiRecDR(_ComiRec):
    def __init__(self, cfg: ComiRecConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.routing = CapsuleRouting(self.schema[cfg.history].dim, cfg.output_dim, cfg.num_interests,
                                      cfg.routing_iterations, shared_map=False, max_len=cfg.max_len)

    def encode_query(self, features: Features) -> torch.Tensor:
        e, mask = embed_sequence(self.embedding, self.cfg.history, features[self.cfg.history])
        caps = self.with_side(self.routing(e, mask), features)
        out = l2_normalize(caps)
        empty = ~mask.any(1)
        if empty.any():  # no behaviour: one constant interest instead of zeros
            first = torch.zeros_like(out[:1, :1]).index_fill(-1, torch.tensor([0], device=out.device), 1.0)
            filler = torch.cat([first, torch.zeros_like(out[:1, 1:])], 1)
            out = torch.where(empty[:, None, None], filler.expand_as(out), out)
        return out


def _diversity(cats: np.ndarray) -> np.ndarray:
    """Pairwise g(i, j) in [0, 1] for one request: [C] category ids -> 1 - [c_i == c_j];
    [C, G] multi-hot genre sets -> Jaccard distance."""
    if cats.ndim == 1:
        return (cats[:, None] != cats[None, :]).astype(np.float64)
    a = cats.astype(np.float64)
    inter = a @ a.T
    union = a.sum(1)[:, None] + a.sum(1)[None, :] - inter
    return np.where(union > 0, 1.0 - inter / np.maximum(union, 1e-12), 0.0)


def controllable_aggregate(scores: np.ndarray, categories: np.ndarray, n: int,
                           lam: float) -> np.ndarray:
    """ComiRec's controllable aggregation (greedy maximisation of Q(u, S)).

    ``scores`` [B, C]: f(u, i) of each merged candidate (max over the interests; -inf = none),
    ``categories`` [B, C] category ids or [B, C, G] multi-hot genres, ``n`` items to return,
    ``lam`` >= 0 the accuracy/diversity trade-off. Returns candidate positions [B, n] in pick
    order (-1 where fewer than n candidates). lam = 0 gives the pure accuracy (score) order.
    Vectorised over the requests; one step per picked item.
    """
    scores = np.asarray(scores, dtype=np.float64)
    b, c = scores.shape
    n = min(n, c)
    cats = np.asarray(categories)
    g = np.stack([_diversity(cats[r]) for r in range(b)]) if b else np.zeros((0, c, c))  # [B, C, C]
    gain = np.zeros((b, c))
    chosen = np.zeros((b, c), dtype=bool)
    out = np.full((b, n), -1, dtype=np.int64)
    rows = np.arange(b)
    available = np.isfinite(scores)
    for step in range(n):
        obj = np.where(available & ~chosen, scores + lam * gain, -np.inf)
        pick = obj.argmax(1)
        ok = np.isfinite(obj[rows, pick])
        out[ok, step] = pick[ok]
        chosen[rows[ok], pick[ok]] = True
        gain[ok] += g[rows[ok], pick[ok]]  # g(i, j) of every candidate with the new pick
    return out
