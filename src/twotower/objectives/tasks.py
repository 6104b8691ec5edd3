"""Retrieval tasks: the glue between a model's logits and a loss, in one documented order.

A task computes one training loss from a batch: it encodes both sides with the model, builds the
logits, then applies, in this order (as TF Recommenders' retrieval task does):

1. the temperature (inside ``model.logits``),
2. the log-Q correction (each candidate kind by its own sampling probability),
3. accidental-hit removal,
4. the cross-entropy, weighted by the per-example sample weight.

Tasks are ``nn.Module`` so their state (the frequency estimator's arrays, the sampler's RNG)
is saved in checkpoints and restored on resume.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from twotower.config import ObjectiveConfig
from twotower.errors import ConfigError
from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.fused import fused_in_batch_softmax
from twotower.objectives.losses import binary_cross_entropy, in_batch_softmax, mixed_negative_softmax
from twotower.objectives.negatives import UniformSampler, in_batch_candidates
from twotower.types import Batch, Features


class RetrievalTask(nn.Module):
    """In-batch softmax (optionally with mixed uniform negatives) or pointwise click BCE.

    ``corpus`` holds the encoded item features of the whole corpus (one row per item); it is
    needed only for mixed negatives, which draw items uniformly from it.
    """

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.item_id = item_id
        self.estimator = (FrequencyEstimator(cfg.estimator.num_buckets, cfg.estimator.num_hashes,
                                             cfg.estimator.alpha)
                          if cfg.logq_correction and cfg.name != "pointwise_bce" else None)
        self.sampler: UniformSampler | None = None
        self.corpus = corpus
        if cfg.name == "mixed_negatives":
            if cfg.uniform_negatives <= 0:
                raise ConfigError("objective.uniform_negatives must be > 0 for mixed_negatives")
            if corpus is None:
                raise ConfigError("mixed_negatives needs the item corpus (data.items or train items)")
            n = len(next(iter(corpus.values())))
            # sampler index j in [1, n] is corpus row j - 1 (index 0 is never drawn)
            self.sampler = UniformSampler(n + 1, cfg.uniform_negatives, seed)
        if cfg.in_batch_block is not None and cfg.name != "in_batch_softmax":
            raise ConfigError(f"objective.in_batch_block applies to in_batch_softmax, not {cfg.name}: "
                              "set objective.in_batch_block: null (the MovieLens fast preset sets "
                              "1024)")
        if cfg.name == "pointwise_bce":
            # cosine/temperature is centred on 0; a learned bias lets sigmoid match the click rate
            self.bias = nn.Parameter(torch.zeros(()))
        self._corpus_device: tuple[torch.device, Features] | None = None

    @property
    def positives_only(self) -> bool:
        """Softmax tasks learn from clicked rows only; the pointwise task needs unclicks too."""
        return self.cfg.name != "pointwise_bce"

    def _corpus_on(self, device: torch.device) -> Features:
        if self._corpus_device is None or self._corpus_device[0] != device:
            self._corpus_device = (device, {k: torch.as_tensor(v).to(device)
                                            for k, v in self.corpus.items()})
        return self._corpus_device[1]

    def loss(self, model: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        q = model.encode_query(batch.query)  # [B, V, D]
        i = model.encode_item(batch.item)  # [B, V, D]
        loss, logs = self._loss(model, batch, step, q, i)
        # a model may add its own training signal (e.g. DAT's mimic loss) on the row-aligned pairs
        aux = getattr(model, "auxiliary_loss", None)
        if aux is not None:
            extra, extra_logs = aux(q, i, batch)
            loss = loss + extra
            logs = {**logs, **extra_logs}
        return loss, logs

    def _loss(self, model: nn.Module, batch: Batch, step: int, q: torch.Tensor,
              i: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.cfg.name == "pointwise_bce":
            if batch.label is None:
                raise ConfigError("objective pointwise_bce needs data.label (click / unclick)")
            logits = model.pair_logits(q, i) + self.bias
            return binary_cross_entropy(logits, batch.label, batch.weight), {}
        if self.estimator is not None:
            self.estimator.update(batch.item_ids, step)
        ids, log_q = in_batch_candidates(batch.item_ids, self.estimator)
        if self.sampler is None:
            return blockwise(partial(self._in_batch, model), self.cfg.in_batch_block,
                             q, i, ids, log_q, batch.weight), {}
        logits = model.logits(q, i)  # [B, B]
        rows, extra_log_q = self.sampler.sample()
        corpus = self._corpus_on(logits.device)
        pick = (rows - 1).to(logits.device)
        extra_feats = {k: v[pick] for k, v in corpus.items()}
        extra = model.encode_item(extra_feats)  # [N', V, D]
        extra_ids = extra_feats[self.item_id]
        return mixed_negative_softmax(
            model.pair_logits(q, i), logits, ids, log_q, model.logits(q, extra), extra_ids,
            extra_log_q.to(logits.device), batch.weight), {}

    def _in_batch(self, model: nn.Module, q: torch.Tensor, i: torch.Tensor, ids: torch.Tensor,
                  log_q: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """In-batch softmax over the rows given (the batch, or one block of it)."""
        if uses_plain_logits(model):
            # same loss and gradients as the plain path below, one [B, B] buffer instead of many
            return fused_in_batch_softmax(q[:, 0] / model.temperature, i[:, 0], ids, log_q,
                                          weight, self.cfg.remove_accidental_hits)
        return in_batch_softmax(model.logits(q, i), ids, log_q, weight,
                                remove_hits=self.cfg.remove_accidental_hits)

    def get_extra_state(self) -> dict:
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])


def blockwise(loss_fn, block: int | None, q: torch.Tensor, i: torch.Tensor, ids: torch.Tensor,
              log_q: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor:
    """The batch's weighted mean of ``loss_fn(q, i, ids, log_q, weight)`` applied to consecutive
    blocks of ``block`` rows (the whole batch when ``block`` is None or not smaller): each block's
    mean is weighted by its share of the batch's total weight, so the result is the mean over all
    rows. The log-Q term needs no rescaling per block: a block-sized candidate set shifts every
    log q of a row by the same constant, which the softmax ignores."""
    rows = ids.shape[0]
    if block is None or rows <= block:
        return loss_fn(q, i, ids, log_q, weight)
    total = weight.sum().clamp_min(1e-12) if weight is not None else None
    loss = q.new_zeros(())
    for start in range(0, rows, block):
        part = slice(start, start + block)
        w = None if weight is None else weight[part]
        share = (w.sum() / total) if w is not None else ids[part].shape[0] / rows
        loss = loss + share * loss_fn(q[part], i[part], ids[part],
                                      None if log_q is None else log_q[part], w)
    return loss


def uses_plain_logits(model: nn.Module) -> bool:
    """True when the model scores by the base class's first-vector dot product / temperature."""
    from twotower.models.base import TwoTowerModel

    return isinstance(model, TwoTowerModel) and type(model).logits is TwoTowerModel.logits


def build_task(cfg: ObjectiveConfig, corpus: Features | None = None, item_id: str = "item_id",
               seed: int = 0) -> RetrievalTask:
    return RetrievalTask(cfg, corpus, item_id, seed)
