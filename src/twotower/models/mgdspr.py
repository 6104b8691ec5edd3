"""MGDSPR: Multi-Grained Deep Semantic Product Retrieval.

Li et al., "Embedding-based Product Retrieval in Taobao Search" (KDD 2021). User tower: the
query's multi-granular semantic unit Q_mgs (unigram, bigram, token-sequence, past-query and mix
granularities, ``towers.query_units.MultiGranularQuery``); each behaviour span (real-time /
short-term / long-term sequence features) self-attended and read by every granularity;
self-attention over [[CLS], Q_mgs, the attended spans, the user's side features] — the [CLS]
output is the user-query vector. Item tower: an MLP over the item's fields. Softmax training.

Relevance control, the paper's device for trading personalisation (fitting each user's clicks)
for relevance (matching the query): the model's own ``relevance_temperature`` tau divides its
scores (a larger tau smooths the fit of noisy clicks: more relevant, less personal), and
``hard_negatives`` > 0 adds relevance-improving noise negatives, I_mix = alpha I+ +
(1 - alpha) I_hard with alpha ~ U(mix_alpha) and I_hard the row's top in-batch negatives,
scored in a softmax with the positive (``objectives.mgdspr``; the paper appends them to the main
softmax, whose denominator the objective owns here).
"""
from __future__ import annotations

import torch
from pydantic import Field, model_validator

from twotower.config import FeatureKind, ModelConfig
from twotower.errors import ConfigError
from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import UserSideMixin
from twotower.towers.embedding import FeatureSchema
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.query_units import ClsFusion, MultiGranularQuery, QueryAttendedSpans
from twotower.towers.sequence import embed_sequence
from twotower.types import Features


class MGDSPRConfig(ModelConfig):
    query_text: str = Field("query_text", description="query feature with the query's tokens (kind: text)")
    query_history: str | None = Field(None, description="query feature with the user's past queries "
                                      "(a sequence or text feature): the `history` granularity")
    behaviours: list[str] = Field(default_factory=list, description="behaviour spans, most recent "
                                  "first (sequence features, e.g. [session, long_history])")
    heads: int = Field(2, gt=0, description="self-attention heads (must divide output_dim)")
    item_hidden: list[int] = Field(default_factory=list, description="hidden layers of the item tower")
    relevance_temperature: float = Field(1.0, gt=0, description="tau of the relevance control: "
                                         "larger = more relevance, less personalisation")
    hard_negatives: int = Field(0, ge=0, description="mixed hard negatives per row (0 = off)")
    mix_alpha: tuple[float, float] = Field((0.4, 0.8), description="alpha range of I_mix")
    hard_negative_weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _alpha_range(self):
        a, b = self.mix_alpha
        if not 0 <= a <= b <= 1:
            raise ValueError(f"mix_alpha: expected 0 <= a <= b <= 1, got {self.mix_alpha}")
        return self


@register("mgdspr", MGDSPRConfig)
class MGDSPR(UserSideMixin, TwoTowerModel):
    def __init__(self, cfg: MGDSPRConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        if cfg.query_text not in schema or schema[cfg.query_text].kind != FeatureKind.TEXT:
            raise ConfigError(f"model mgdspr: model.query_text {cfg.query_text!r} must name a "
                              f"query feature of kind: text (query features: {', '.join(self.query_fields)})")
        seqs = [cfg.query_text] + ([cfg.query_history] if cfg.query_history else [])
        for name in seqs[1:] + cfg.behaviours:
            if name not in schema or schema[name].kind not in (FeatureKind.SEQUENCE, FeatureKind.TEXT):
                raise ConfigError(f"model mgdspr: {name!r} must be a query feature of kind sequence or text")
        self.side_fields = [n for n in self.query_fields if n not in seqs + cfg.behaviours]
        d = cfg.output_dim
        self.units = MultiGranularQuery(schema[cfg.query_text].dim, d, cfg.query_history is not None,
                                        cfg.heads)
        if cfg.query_history and schema[cfg.query_history].dim != schema[cfg.query_text].dim:
            raise ConfigError("model mgdspr: query_history must have the query text's embedding_dim")
        self.span_proj = torch.nn.ModuleList(torch.nn.Linear(schema[n].dim, d) for n in cfg.behaviours)
        self.spans = QueryAttendedSpans(d, len(cfg.behaviours), cfg.heads)
        self.side_proj = (torch.nn.Linear(self.field_width(self.side_fields), d)
                          if self.side_fields else None)
        self.fusion = ClsFusion(d, cfg.heads)
        self.out = MLP(d, cfg.hidden, d, cfg.dropout)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, d)

    def granularities(self, features: Features) -> torch.Tensor:
        """Q_mgs [B, G, D], in the order of ``self.units.names``."""
        tokens, mask = embed_sequence(self.embedding, self.cfg.query_text, features[self.cfg.query_text])
        hist = hist_mask = None
        if self.cfg.query_history:
            hist, hist_mask = embed_sequence(self.embedding, self.cfg.query_history,
                                             features[self.cfg.query_history])
        return self.units.units(tokens, mask, hist, hist_mask)

    def fuse(self, q_mgs: torch.Tensor, features: Features) -> torch.Tensor:
        """Q_mgs [B, G, D] (+ the behaviours and side features of ``features``) -> [B, 1, D]."""
        spans = []
        for name, proj in zip(self.cfg.behaviours, self.span_proj):
            e, m = embed_sequence(self.embedding, name, features[name])
            spans.append((proj(e), m))
        tokens = [q_mgs] + self.spans(q_mgs, spans)
        if self.side_proj is not None:
            side = self._side(features, self.side_fields, q_mgs.shape[0], q_mgs.device)
            tokens.append(self.side_proj(side).unsqueeze(1))
        return l2_normalize(self.out(self.fusion(torch.cat(tokens, 1)))).unsqueeze(1)

    def encode_query(self, features: Features) -> torch.Tensor:
        return self.fuse(self.granularities(features), features)

    def encode_item(self, features: Features) -> torch.Tensor:
        x = torch.cat(self.embedding(features, self.item_fields), dim=-1)
        return l2_normalize(self.item_tower(x)).unsqueeze(1)

    # ---- relevance control: the model's own temperature on top of the objective's
    def logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return super().logits(q, i) / self.cfg.relevance_temperature

    def pair_logits(self, q: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return super().pair_logits(q, i) / self.cfg.relevance_temperature

    def contract(self) -> dict:
        return {**super().contract(), "granularities": self.units.names,
                "relevance_temperature": self.cfg.relevance_temperature}
