"""MOBIUS v2: the departures from Algorithm 1 of Fan et al. (KDD 2019) that the simulator bench
measured on validation (README, MOBIUS v2). Each is a small function the task or the run calls:

* ``clean_click_labels``: a clicked impression the teacher calls low-relevance is click-bait, not a
  positive: relabelled bad or down-weighted, so the click class stops learning it.
* ``drop_item_ids``: id dropout — a share of rows train with the ad id set to the out-of-vocabulary
  id, so the ad tower learns to place ads by content (never-shown ads all share that id).
* ``RelevantValidation``: a model-selection metric that counts only teacher-relevant hits
  (``relevant_recall@K``), weighted by the business weight (``relevant_value@K``), and the
  teacher's share of relevant ads in the top K (``teacher_relevant@K``).
* ``two_stage_scores``: ANN top-N by the model, then exact cos x w^alpha over those N with a
  relevance floor from the model's own p(bad) / p(click).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from twotower.config import MOBIUS_RETRIEVAL
from twotower.errors import ConfigError
from twotower.features.encoders import OOV
from twotower.models.mobius import BAD, CLICK
from twotower.types import Features

REL_KEY = "mobius_impression_relevance"


def resolve_retrieval(m, model_cfg) -> None:
    """Fill ``model.retrieval`` from the mode when unset; ``mode: paper`` (Algorithm 1) retrieves
    by the click vectors only, so an explicit click_minus_bad there is refused."""
    if not hasattr(model_cfg, "retrieval"):
        return
    if model_cfg.retrieval is None:
        model_cfg.retrieval = MOBIUS_RETRIEVAL[m.mode]
    elif m.mode == "paper" and model_cfg.retrieval != "click":
        raise ConfigError("model.retrieval: mode: paper retrieves by the click vectors only; "
                          "click_minus_bad needs objective.mobius.mode: v2")


def clean_click_labels(target: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor,
                       threshold: float, how: str, clean_weight: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [B], weight [B]) with clicks of teacher relevance < ``threshold`` relabelled
    ``bad`` (``how='relabel_bad'``) or their weight scaled by ``clean_weight`` (``'downweight'``)."""
    low_click = (target == CLICK) & (relevance.to(target.device) < threshold)
    if how == "relabel_bad":
        return torch.where(low_click, torch.full_like(target, BAD), target), weight
    if how == "downweight":
        return target, torch.where(low_click, weight * clean_weight, weight)
    return target, weight


def drop_item_ids(item: Features, id_feature: str, p: float, generator: torch.Generator
                  ) -> Features:
    """A copy of ``item`` with each row's ``id_feature`` set to OOV with probability ``p``."""
    if p <= 0 or id_feature not in item:
        return item
    ids = item[id_feature]
    drop = torch.rand(ids.shape[0], generator=generator) < p
    shape = (-1,) + (1,) * (ids.dim() - 1)
    return {**item, id_feature: torch.where(drop.reshape(shape).to(ids.device),
                                            torch.full_like(ids, OOV), ids)}


class RelevantValidation:
    """Teacher-aware validation metrics of a MOBIUS run, computed from the same full-corpus ranking
    as the plain ones. ``target_rel`` [T] / ``target_value`` [T]: teacher relevance and business
    weight of each validation target (a clicked ad of a request); ``pair_rel(req [P], pos [P])``
    scores (request, corpus position) pairs with the teacher."""

    def __init__(self, target_rel: np.ndarray, target_value: np.ndarray, threshold: float,
                 pair_rel: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.relevant = np.asarray(target_rel) >= threshold
        self.value = np.asarray(target_value, dtype=np.float64)
        self.threshold, self.pair_rel = threshold, pair_rel

    def metrics(self, ranks: np.ndarray, t_req: np.ndarray, topk: np.ndarray, n_requests: int,
                ks: list[int]) -> dict[str, float]:
        out: dict[str, float] = {}
        rel, val = self.relevant, self.value * self.relevant
        has = np.bincount(t_req, weights=rel, minlength=n_requests) > 0
        denom_n = np.bincount(t_req, weights=rel, minlength=n_requests)
        denom_v = np.bincount(t_req, weights=val, minlength=n_requests)
        rows = np.repeat(np.arange(topk.shape[0]), topk.shape[1])
        flat = topk.ravel()
        ok = flat >= 0
        top_rel = np.zeros(flat.shape, dtype=bool)
        top_rel[ok] = self.pair_rel(rows[ok], flat[ok]) >= self.threshold
        top_rel = top_rel.reshape(topk.shape)
        for k in ks:
            hit = ranks < k
            n = np.bincount(t_req, weights=hit * rel, minlength=n_requests)
            v = np.bincount(t_req, weights=hit * val, minlength=n_requests)
            out[f"relevant_recall@{k}"] = float((n[has] / denom_n[has]).mean()) if has.any() else 0.0
            vh = denom_v > 0
            out[f"relevant_value@{k}"] = float((v[vh] / denom_v[vh]).mean()) if vh.any() else 0.0
            out[f"teacher_relevant@{k}"] = float(top_rel[:, :k].mean())
        return out


def two_stage_scores(q: torch.Tensor, items: torch.Tensor, weight: torch.Tensor, n: int,
                     alpha: float, floor: float, temperature: float,
                     first_stage: torch.Tensor | None = None) -> torch.Tensor:
    """[R, A] scores whose order is the two-stage BRW ranking.

    ``q`` [R, 3, D] and ``items`` [A, 3, D]: the model's (normalised) class vectors; stage 1 keeps
    each request's top ``n`` by ``first_stage`` [R, A] (default: the click cosine); stage 2 ranks
    them by cos_click x w^alpha, first those whose p(bad) / p(click) is at most ``floor`` (the
    model's own relevance floor), then the others; everything outside the top n ranks below.
    """
    cos = torch.einsum("rd,ad->ra", q[:, CLICK], items[:, CLICK])
    first = cos if first_stage is None else first_stage
    n = min(n, items.shape[0])
    top = first.topk(n, dim=1).indices  # [R, n]
    c = cos.gather(1, top)
    bad = (q[:, None, BAD] * items[top][:, :, BAD]).sum(-1)  # [R, n]
    unclick_logit = (q[:, None, 1] * items[top][:, :, 1]).sum(-1)
    p = torch.stack([c, unclick_logit, bad], 0).div(temperature).softmax(0)  # [3, R, n]
    passes = (p[2] / p[0].clamp_min(1e-12)) <= floor
    # scores: survivors above non-survivors above the rest; within a group by cos x w^alpha
    w = weight.float().clamp_min(1e-12).pow(alpha)[top]
    inner = c.clamp_min(-1.0) * w
    span = inner.abs().max().clamp_min(1e-6) * 4
    second = inner + torch.where(passes, 2 * span, span)
    out = torch.full_like(cos, float("-inf"))
    return out.scatter(1, top, second)
