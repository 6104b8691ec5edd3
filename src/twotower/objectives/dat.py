"""DAT's training signal beside the objective's loss (Yu et al., DLP-KDD 2021)."""
from __future__ import annotations

import torch
from torch import nn

from twotower.objectives.auxiliary import register_auxiliary
from twotower.objectives.losses import category_alignment_loss, mimic_loss
from twotower.types import Batch, Side


@register_auxiliary("dat")
def dat_auxiliary_loss(model: nn.Module, q: torch.Tensor, i: torch.Tensor, batch: Batch,
                       temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """DAT (Yu et al., DLP-KDD 2021): adaptive mimic of each side's augmented vector toward the
    other tower's output on positive row-aligned pairs (+ category alignment of the item vectors
    when ``model.category_field`` is set), weighted by the model config's weights."""
    positive = (batch.label > 0) if batch.label is not None else torch.ones(
        len(q), dtype=torch.bool, device=q.device)
    a_u = model.augmented(batch.query, Side.QUERY)
    a_v = model.augmented(batch.item, Side.ITEM)
    mimic = mimic_loss(a_u, i[:, 0], positive) + mimic_loss(a_v, q[:, 0], positive)
    total = model.cfg.mimic_weight * mimic
    logs = {"mimic": float(mimic.detach())}
    if model.cfg.category_field is not None:
        ca = category_alignment_loss(i[:, 0], batch.item[model.cfg.category_field])
        total = total + model.cfg.category_weight * ca
        logs["category_alignment"] = float(ca.detach())
    return total, logs
