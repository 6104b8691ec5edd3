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

Serving (``item_to_item_table`` + ``path_retrieve``): the SimilarityNet fills an item-to-item top-k
table offline; a request looks up its triggers' rows, adds each trigger's weight and sums the
paths that reach the same item (deduplicated). The generic multi-vector index
(``retrieval_query`` / max merge) serves the best single path per item instead.
"""
from __future__ import annotations

import numpy as np
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


@register("pdn", PDNConfig)
class PDN(UserSideMixin, TwoTowerModel):
    similarity = Similarity.INNER_PRODUCT

    def __init__(self, cfg: PDNConfig, schema: FeatureSchema):
        super().__init__(cfg, schema)
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
                "query_vectors": "all (one per trigger)", "merge": "max",
                "serving": "item-to-item table + trigger weights (models.pdn.path_retrieve)"}


@torch.no_grad()
def item_to_item_table(model: PDN, item_index: torch.Tensor, item_vecs: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SimilarityNet top-k of every corpus item: (neighbour positions [N, k], s_jk [N, k]).

    ``item_index`` [N]: encoded item index of each corpus row; ``item_vecs`` [N, D + 1]: the
    corpus's ``retrieval_item`` vectors (b_k, 1). An item is not its own neighbour.
    """
    from twotower.index.exact import exact_search

    a = model.trigger_vectors(item_index) / model.temperature  # [N, D]
    b = item_vecs[:, :-1]
    k = min(k, len(b) - 1)
    scores, pos = exact_search(a, b, k + 1)
    self_hit = pos == torch.arange(len(b), device=pos.device).unsqueeze(1)
    # drop the item itself (or the last one when it is not among the top k + 1)
    drop = torch.where(self_hit.any(1), self_hit.float().argmax(1), torch.full_like(pos[:, 0], k))
    keep = torch.ones_like(pos, dtype=torch.bool).scatter(1, drop.unsqueeze(1), False)
    return pos[keep].reshape(len(b), k), scores[keep].reshape(len(b), k)


@torch.no_grad()
def path_retrieve(model: PDN, features: Features, table: tuple[torch.Tensor, torch.Tensor],
                  corpus_pos: np.ndarray | torch.Tensor, n_items: int, k: int,
                  chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Serve PDN through the item-to-item table: (scores [B, k], corpus positions [B, k]).

    For each request: triggers = its history (encoded item indices -> corpus rows via
    ``corpus_pos``), path log-score = log w_uj + s_jk over each trigger's table row, and the paths
    reaching the same item are summed (log-sum-exp) — one deduplicated score per item.
    """
    nb_pos, nb_score = table
    corpus_pos = torch.as_tensor(corpus_pos, device=nb_pos.device)
    log_w, mask = model.trigger_log_weights(features)  # [B, L]
    hist = features[model.cfg.history]
    trig = torch.where(hist < len(corpus_pos), corpus_pos[hist.clamp_max(len(corpus_pos) - 1)], -1)
    ok = mask & (trig >= 0)
    out_s, out_i = [], []
    for s in range(0, hist.shape[0], chunk):
        t, w, m = trig[s:s + chunk].clamp_min(0), log_w[s:s + chunk], ok[s:s + chunk]
        paths = (w.unsqueeze(-1) + nb_score[t]).masked_fill(~m.unsqueeze(-1), float("-inf"))  # [b, L, k]
        dest = nb_pos[t]  # [b, L, k]
        acc = torch.zeros(t.shape[0], n_items, device=t.device)
        top = paths.amax(dim=(1, 2), keepdim=True).clamp_min(-1e30)  # stable exp
        acc.scatter_add_(1, dest.reshape(t.shape[0], -1), torch.exp(paths - top).reshape(t.shape[0], -1))
        score = torch.log(acc) + top.reshape(-1, 1)
        kk = min(k, n_items)
        sc, ix = score.topk(kk, dim=1)
        out_s.append(sc)
        out_i.append(torch.where(torch.isfinite(sc), ix, torch.full_like(ix, -1)))
    return torch.cat(out_s), torch.cat(out_i)
