"""PDN served through an item-to-item table (Li et al., "Path-based Deep Network for Candidate
Item Matching in Recommenders", SIGIR 2021): the SimilarityNet fills a top-k table offline; a
request looks up its triggers' rows, adds each trigger's log weight and sums the paths reaching the
same item (log-sum-exp) — one deduplicated score per item."""
from __future__ import annotations

import numpy as np
import torch

from twotower.index.exact import exact_search
from twotower.models.pdn import PDN
from twotower.types import Features


@torch.no_grad()
def item_to_item_table(model: PDN, item_index: torch.Tensor, item_vecs: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SimilarityNet top-k of every corpus item: (neighbour positions [N, k], s_jk [N, k]).

    ``item_index`` [N]: encoded item index of each corpus row; ``item_vecs`` [N, D + 1]: the
    corpus's ``retrieval_item`` vectors (b_k, 1). An item is not its own neighbour.
    """
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
