"""SDM: Sequential Deep Matching.

Lv et al., "SDM: Sequential Deep Matching Model for Online Large-scale Recommender System"
(CIKM 2019). Short-term: the latest session (cut from timestamps by a gap, see
``data.movielens.cut_sessions``) -> LSTM -> multi-head self-attention -> user attention (the
user profile attends over the session). Long-term: the behaviours before the session ->
attention with the user profile -> dense. A fusion gate mixes them:
o = (1 - G) * long + G * short, G = sigmoid(W1 e_u + W2 short + W3 long + b).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from twotower.models.base import TwoTowerModel, register
from twotower.models.youtubednn import SequenceModelConfig, UserSideMixin
from twotower.towers.embedding import FeatureSchema
from twotower.towers.gate import FusionGate
from twotower.towers.mlp import MLP, l2_normalize
from twotower.towers.sequence import AttentionPooling, MultiHeadSelfAttention, embed_sequence
from twotower.types import Features


class SDMConfig(SequenceModelConfig):
    history: str = Field("history", description="query feature with the latest session (short-term; "
                         "MovieLens: `session`), or the whole history when long_history is null")
    long_history: str | None = Field(None, description="query feature with the behaviours before the "
                                     "session (MovieLens: `long_history`); null: the last session_len "
                                     "items of `history` are the session, the rest the long term")
    session_len: int = Field(10, gt=0, description="session length when long_history is null")
    heads: int = Field(2, gt=0, description="self-attention heads (must divide output_dim)")
    lstm_layers: int = Field(1, gt=0)


@register("sdm", SDMConfig)
class SDM(UserSideMixin, TwoTowerModel):
    def __init__(self, cfg: SDMConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
        seqs = (cfg.history,) + ((cfg.long_history,) if cfg.long_history else ())
        self.side_fields = self._split_query_fields(*seqs)
        self.long_field = cfg.long_history or cfg.history
        d, e = cfg.output_dim, self.schema[cfg.history].dim
        user_dim = max(self.field_width(self.side_fields), 1)
        self.user_proj = MLP(user_dim, [], d)
        self.lstm = nn.LSTM(e, d, num_layers=cfg.lstm_layers, batch_first=True)
        self.self_attention = MultiHeadSelfAttention(d, cfg.heads, cfg.dropout)
        self.short_attention = AttentionPooling(d, d)
        self.long_attention = AttentionPooling(d, self.schema[self.long_field].dim)
        self.long_dense = nn.Sequential(nn.Linear(self.schema[self.long_field].dim, d), nn.Tanh())
        self.gate = FusionGate(d, d)
        self.item_tower = MLP(self.field_width(self.item_fields), cfg.item_hidden, d)

    def user_profile(self, features: Features, batch: int, device) -> torch.Tensor:
        side = self._side(features, self.side_fields, batch, device)
        if side.shape[1] == 0:
            side = torch.zeros(batch, 1, device=device)
        return self.user_proj(side)  # [B, D]

    def split(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(session [B, Ls], long-term [B, Ll]) id matrices, left-aligned, 0 = padding."""
        x = features[self.cfg.history]
        if self.cfg.long_history:
            return x, features[self.cfg.long_history]
        n = (x > 0).sum(1, keepdim=True)  # histories are left-aligned: valid = [0, n)
        s = min(self.cfg.session_len, x.shape[1])
        start = (n - s).clamp_min(0)
        pos = torch.arange(s, device=x.device).unsqueeze(0)
        short = x.gather(1, (start + pos).clamp_max(x.shape[1] - 1))
        short = short.masked_fill(pos >= torch.minimum(n, torch.full_like(n, s)), 0)
        long = x.masked_fill(torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= start, 0)
        return short, long

    def parts(self, features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user profile, short-term s, long-term p), each [B, D]."""
        short_x, long_x = self.split(features)
        e_s, m_s = embed_sequence(self.embedding, self.cfg.history, short_x)
        e_l, m_l = embed_sequence(self.embedding, self.long_field, long_x)
        user = self.user_profile(features, e_s.shape[0], e_s.device)
        h, _ = self.lstm(e_s)  # padding is at the end, so valid steps never see it
        h = self.self_attention(h, m_s)
        short = self.short_attention(user, h, m_s)
        long = self.long_dense(self.long_attention(user, e_l, m_l))
        return user, short, long

    def encode_query(self, features: Features) -> torch.Tensor:
        user, short, long = self.parts(features)
        return l2_normalize(self.gate(user, short, long)).unsqueeze(1)

    def encode_item(self, features: Features) -> torch.Tensor:
        return self._item_vector(features)
