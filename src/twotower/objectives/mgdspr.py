"""MGDSPR's relevance-improving mixed hard negatives (Li et al., "Embedding-based Product Retrieval
in Taobao Search", KDD 2021), added beside the objective's softmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.objectives.auxiliary import register_auxiliary
from twotower.towers.mlp import l2_normalize
from twotower.types import Batch


@register_auxiliary("mgdspr")
def mgdspr_auxiliary_loss(model: nn.Module, q: torch.Tensor, i: torch.Tensor, batch: Batch,
                          temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Each row's positive against its ``hard_negatives`` mixed hard negatives, one softmax,
    scored like the model's logits (similarity / (temperature * relevance_temperature))."""
    cfg = model.cfg
    n = min(cfg.hard_negatives, q.shape[0] - 1)
    if n <= 0 or cfg.hard_negative_weight == 0:
        return q.new_zeros(()), {}
    mixed = mixed_hard_negatives(q[:, 0], i[:, 0], batch.item_ids, n, cfg.mix_alpha)
    scale = temperature * cfg.relevance_temperature
    pos = ((q[:, 0] * i[:, 0]).sum(-1) / scale).unsqueeze(1)
    neg = torch.einsum("bd,bnd->bn", q[:, 0], mixed) / scale
    loss = F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros_like(batch.item_ids))
    return cfg.hard_negative_weight * loss, {"mixed_negative_loss": float(loss.detach())}


def mixed_hard_negatives(q: torch.Tensor, i: torch.Tensor, item_ids: torch.Tensor, n: int,
                         alpha_range: tuple[float, float]) -> torch.Tensor:
    """MGDSPR's relevance-improving negatives: for each row of q [B, D] (positives i [B, D]), its
    ``n`` highest-scored in-batch items that are not its positive (``item_ids`` [B]), each mixed
    with the positive: normalize(alpha i+ + (1 - alpha) i_hard), alpha ~ U(alpha_range) -> [B, n, D]."""
    same = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)  # the positive and accidental hits
    with torch.no_grad():
        hard = (q @ i.T).masked_fill(same, float("-inf")).topk(n, dim=1).indices  # [B, n]
    a, b = alpha_range
    alpha = torch.rand(q.shape[0], n, 1, device=q.device) * (b - a) + a
    return l2_normalize(alpha * i.unsqueeze(1) + (1 - alpha) * i[hard])
