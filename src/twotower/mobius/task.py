"""The MOBIUS training task: Algorithm 1 of Fan et al., "MOBIUS: Towards the Next Generation of
Query-Ad Matching in Baidu's Sponsored Search" (KDD 2019), as a task the model-agnostic Trainer calls.

Per batch: 3-class cross-entropy on the impressions (click / unclick); after the warm-up, also
(1) deduplicate the batch's queries (with their users) and ads, (2) cross join them, (3) ask the
relevance teacher, keep pairs under the threshold, (4) score them with the student (no gradient),
(5) sample bad cases with probability rising with predicted CTR, (6) add them as class "bad".
Steps (3)-(5) run in the order that costs least and draws the same sample: the student scores the
whole cross join (one batched product), pairs are drawn by CTR, and the teacher is asked only
about the drawn pairs, keeping the first low-relevance ones (``sample_bad_cases_lazily``).
In eval mode (a validation loss) the task mines nothing: the loss is the impressions' 3-class
cross-entropy, and the sampler's stream and the mining totals stay as they were.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from twotower.config import MobiusObjectiveConfig
from twotower.errors import ConfigError
from twotower.mobius.augment import dedup_ids, dedup_rows, observed_mask
from twotower.mobius.sampler import sample_bad_cases_lazily, sample_uniform
from twotower.mobius.v2 import REL_KEY, clean_click_labels, drop_item_ids
from twotower.models.mobius import BAD, CLICK, UNCLICK
from twotower.objectives.losses import class_softmax_loss
from twotower.types import Batch

QUERY_KEY, AD_KEY = "mobius_query_key", "mobius_ad_key"


class MobiusTask(nn.Module):
    """``teacher`` scores (query key, ad key) pairs; keys come in ``batch.extra``
    (``mobius_query_key`` / ``mobius_ad_key``, row positions of the teacher's prepared values).
    ``warmup_steps``: steps trained on impressions only (the student learns CTR first)."""

    positives_only = False

    def __init__(self, cfg: MobiusObjectiveConfig, teacher=None, threshold: float | None = None,
                 warmup_steps: int = 0, seed: int = 0, temperature: float = 0.05,
                 item_id_feature: str | None = None):
        super().__init__()
        self.temperature = temperature  # the objective's (objective.temperature)
        if cfg.bad_cases == "active" and teacher is None:
            raise ConfigError("objective.mobius: active bad-case mining needs a relevance teacher")
        self.cfg = cfg
        self.teacher = teacher
        self.threshold = cfg.threshold if threshold is None else threshold
        self.warmup_steps = warmup_steps
        self.generator = torch.Generator().manual_seed(seed)
        # v2 id dropout: which feature is the ad id, and its own stream (resumable)
        self.item_id_feature = item_id_feature
        self.dropout_generator = torch.Generator().manual_seed(seed + 1)
        # statistics for reports (restored with a checkpoint, see get_extra_state)
        self.mining_seconds = 0.0
        self.bad_cases_total = 0
        self.mining_steps = 0

    def mine(self, model: nn.Module, batch: Batch, q: torch.Tensor, i: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Class logits [P, V] (differentiable, not yet divided by the temperature) of the
        cross-join pairs of the batch sampled as bad cases. With ``cross_join_block`` the batch is
        cut into blocks of that many rows, each cross joined in itself (as separate batches of
        that size would be): the cost grows with the batch, not with its square, so a large
        batch amortises the per-step costs."""
        rows = len(batch.item_ids)
        size = self.cfg.cross_join_block or rows
        parts = [self._mine_rows(model, batch, q, i, s, min(s + size, rows))
                 for s in range(0, rows, size)]
        logs = {k: sum(p[1][k] for p in parts) for k in parts[0][1]}
        return torch.cat([p[0] for p in parts]), logs

    def _mine_rows(self, model: nn.Module, batch: Batch, q: torch.Tensor, i: torch.Tensor,
                   start: int, end: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Algorithm 1's augmentation and sampling over the rows [start, end) of the batch.

        The student's logits of the whole cross join are one batched product that keeps its
        gradient: the CTR for sampling is read from it without gradient, and the sampled bad
        cases are entries of it — no second gather of the pairs' vectors."""
        q_first, q_inv = dedup_rows({k: v[start:end] for k, v in batch.query.items()})  # [m], [b]
        a_first, a_inv = dedup_ids(batch.item_ids[start:end])  # [n], [b]
        m, n = len(q_first), len(a_first)
        planes = model.class_logit_planes(q[q_first + start], i[a_first + start])  # [V, m, n]
        cap = self.cfg.max_bad_per_batch
        if self.cfg.bad_cases == "random":
            pick = sample_uniform(m * n, cap, self.generator).to(q.device)
            low = m * n
        else:
            if QUERY_KEY not in batch.extra or AD_KEY not in batch.extra:
                raise ConfigError("MOBIUS batches need teacher keys in batch.extra "
                                  f"({QUERY_KEY!r}, {AD_KEY!r}); train with objective.name: mobius")
            qkey = batch.extra[QUERY_KEY][q_first + start].cpu()
            akey = batch.extra[AD_KEY][a_first + start].cpu()

            def is_low(pairs: torch.Tensor) -> torch.Tensor:  # the teacher, on these pairs only
                pairs = pairs.cpu()
                return self.teacher.score_pairs(qkey[pairs // n], akey[pairs % n]) < self.threshold

            with torch.no_grad():  # the student's CTR on the whole cross join
                ctr = model.click_probability(None, None, self.temperature,
                                              planes=planes.detach()).flatten()
            pick, low = sample_bad_cases_lazily(ctr, observed_mask(q_inv, a_inv, m, n).flatten(),
                                                cap, is_low, self.cfg.ctr_temperature,
                                                self.generator)
            pick = pick.to(q.device)
        # "scored": cross-join pairs the teacher was asked about (random: every pair)
        return planes[:, pick // n, pick % n].T, {"pairs": float(m * n), "scored": float(low)}

    def loss(self, model: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.label is None:
            raise ConfigError("objective mobius needs data.label (click / unclick)")
        q = model.encode_query(batch.query)  # [B, V, D]
        item = batch.item
        if self.cfg.item_id_dropout and self.item_id_feature and model.training:
            item = drop_item_ids(item, self.item_id_feature, self.cfg.item_id_dropout,
                                 self.dropout_generator)
        i = model.encode_item(item)  # [B, V, D]
        target = torch.where(batch.label > 0, CLICK, UNCLICK).long()
        weight = batch.weight
        if self.cfg.clean_labels not in (None, "none") and REL_KEY in batch.extra:
            w = weight if weight is not None else torch.ones(len(target), device=target.device)
            target, weight = clean_click_labels(target, w, batch.extra[REL_KEY], self.threshold,
                                                self.cfg.clean_labels, self.cfg.clean_weight)
        logits = model.class_logits(q, i) / self.temperature  # [B, V]
        bad_logits = None
        logs: dict[str, float] = {}
        # eval mode (a validation loss): the impressions' loss only; mining would draw from the
        # sampler's stream and count into the report's totals
        if self.cfg.bad_cases != "none" and step >= self.warmup_steps and self.training:
            t0 = time.perf_counter()
            bad, logs = self.mine(model, batch, q, i)
            self.mining_seconds += time.perf_counter() - t0
            if bad.numel():
                bad_logits = bad / self.temperature  # [P, V]
            self.bad_cases_total += int(bad.shape[0])
            self.mining_steps += 1
            logs["bad_cases"] = float(bad.shape[0])
        return class_softmax_loss(logits, target, weight, bad_logits, BAD,
                                  self.cfg.bad_weight), logs

    def get_extra_state(self) -> dict:
        # the sampler's generator (exact resumption) and the report's running totals
        return {"generator": self.generator.get_state(),
                "dropout_generator": self.dropout_generator.get_state(),
                "bad_cases_total": self.bad_cases_total,
                "mining_steps": self.mining_steps, "mining_seconds": self.mining_seconds}

    def set_extra_state(self, state: dict) -> None:
        if not state:
            return
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        if state.get("dropout_generator") is not None:
            self.dropout_generator.set_state(state["dropout_generator"])
        self.bad_cases_total = int(state.get("bad_cases_total", 0))
        self.mining_steps = int(state.get("mining_steps", 0))
        self.mining_seconds = float(state.get("mining_seconds", 0.0))
