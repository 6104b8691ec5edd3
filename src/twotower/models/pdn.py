"""PDN: Path-based Deep Network.

Li et al., "Path-based Deep Network for Candidate Item Matching in Recommenders" (SIGIR 2021).
Score of item k for user u = log sum over the paths u -> trigger j -> k of
w_uj * exp(s_jk): the TriggerNet gives log w_uj (the user's liking of each item j of their
history, from the user's features, the trigger and its recency) and the SimilarityNet gives
s_jk = <a_j, b_k> / T (item-to-item relevance from item information only, so it can be
precomputed into an item-to-item index).

Vectors: the query side is one vector per trigger, [a_j / T, log w_uj] ([B, L, D + 1]), the item
side [b_k, 1] ([N, 1, D + 1]), so <q_j, i_k> = s_jk + log w_uj is the log score of one path and
``logits`` = logsumexp over the triggers, which trains with the standard in-batch softmax.

PDN's paths are already log-scores, so the model owns its temperature T (``model.temperature``,
the paper's) and declares ``scores_are_logits``: the objective does not rescale them.

Serving through an item-to-item table (``serve.paths``): the SimilarityNet fills an
item-to-item top-k table offline; a request looks up its triggers' rows, adds each trigger's
weight and sums the paths that reach the same item. The generic multi-vector index
(``retrieval_query`` / max merge) serves the best single path per item instead.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.paths import path_logsumexp
from twotower.towers.sequence import embed_sequence
from twotower.types import Features, Similarity

MASKED = -1e4  # log weight of a padding trigger (exp underflows to 0)


class PDNConfig(SequenceModelConfig):
    trigger_hidden: list[int] = Field(default_factory=lambda: [64], description="TriggerNet MLP")
    max_len: int = Field(50, gt=0, description="longest history (recency embedding rows)")
    temperature: float = Field(0.05, gt=0, description="T of the SimilarityNet: s_jk = <a_j, b_k> / T")


@register("pdn", PDNConfig)
class PDN(UserSideMixin, TwoTowerModel):
    similarity = Similarity.INNER_PRODUCT
    scores_are_logits = True

    def __init__(self, cfg: PDNConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        self.temperature = cfg.temperature
        self.side_fields = self._split_query_fields(cfg.history)
        e = self.schema[cfg.history].dim
        self.recency = nn.Embedding(cfg.max_len, 8)
        self.trigger_net = MLP(self.field_width(self.side_fields) + e + 8, cfg.trigger_hidden, 1,
                               cfg.dropout)
        self.trigger_side = MLP(e, cfg.item_hidden, cfg.output_dim)  # SimilarityNet, trigger half
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, cfg.output_dim)

    # ---- SimilarityNet
    def trigger_vectors(self, item_index: torch.Tensor) -> torch.Tensor:
        """a_j of encoded item indices [...] -> [..., D] (unit norm)."""
        weight = self.embedding.tables[self.schema[self.cfg.history].table].weight
        return l2_normalize(self.trigger_side(weight[item_index]))

    def encode_item(self, features: Features) -> torch.Tensor:
        b = self._item_vector(features)  # [N, 1, D], unit norm
        return torch.cat([b, torch.ones_like(b[..., :1])], -1)  # [N, 1, D + 1]

    # ---- TriggerNet
    def trigger_log_weights(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        x = features[self.cfg.history]
        e, mask = embed_sequence(self.embedding, self.cfg.history, x)  # [B, L, E]
        b, length, _ = e.shape
        lengths = mask.sum(1, keepdim=True)
        from_end = (lengths - 1 - torch.arange(length, device=x.device)).clamp(0, self.cfg.max_len - 1)
        side = self._side(features, self.side_fields, b, e.device).unsqueeze(1).expand(b, length, -1)
        t = self.trigger_net(torch.cat([side, e, self.recency(from_end)], -1)).squeeze(-1)  # [B, L]
        return t.masked_fill(~mask, MASKED), mask

    def encode_query(self, features: Features) -> torch.Tensor:
        log_w, mask = self.trigger_log_weights(features)
        a = self.trigger_vectors(features[self.cfg.history]) * mask.unsqueeze(-1)
        return torch.cat([a / self.temperature, log_w.unsqueeze(-1)], -1)  # [B, L, D + 1]

    # ---- scores
    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return path_logsumexp(q, i[:, 0])  # [B, N]: log-sum-exp over the triggers, chunked

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(torch.einsum("bld,bd->bl", q, i[:, 0]), -1)

    def contract(self) -> dict:
        return {**super().contract(), "dim": self.cfg.output_dim + 1, "normalized": False,
                "temperature": self.temperature,
                "query_vectors": "all (one per trigger)", "merge": "max",
                "serving": "item-to-item table + trigger weights (serve.paths.path_retrieve)"}
