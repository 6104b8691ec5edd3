"""Retrieval tasks: the glue between a model's similarities and a loss, in one documented order.

A task computes one training loss from a batch: it encodes both sides with the model, builds the
logits, then applies, in this order (as TF Recommenders' retrieval task does):

1. the temperature (the objective's: ``similarity / objective.temperature``; a model whose scores
   already are logits, ``scores_are_logits``, is not rescaled),
2. the log-Q correction (each candidate kind by its own sampling probability),
3. accidental-hit removal,
4. the cross-entropy, weighted by the per-example sample weight,
5. the model's own auxiliary loss, if one is registered for it (``objectives.auxiliary``).

One task class per objective, registered by ``objective.name`` (``register_task``); an objective
with its own data loop (MOBIUS) registers a recipe instead (``train.recipes``). Tasks are
``nn.Module`` so their state (the frequency estimator's arrays, the sampler's RNG) is saved in
checkpoints and restored on resume.

A task in eval mode (``task.eval()``) computes the same loss without side effects, so the Trainer
can measure a validation loss between epochs without changing what training does next: the
frequency estimator is only read (never updated), random draws (uniform negatives, sub-samples,
SSL views) come from a fixed-seed generator instead of the task's stream (``negatives.draws``), and
MOBIUS mines no bad cases. ``tests/objectives/test_eval_mode.py`` holds every registered task to it.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from twotower.config import ObjectiveConfig
from twotower.errors import ConfigError
from twotower.objectives.auxiliary import auxiliary_loss_for
from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.fused import fused_in_batch_softmax
from twotower.objectives.losses import (binary_cross_entropy, full_softmax, in_batch_softmax,
                                        mixed_negative_softmax)
from twotower.objectives.negatives import UniformSampler, draws, in_batch_candidates
from twotower.types import Batch, Features

#: objective name -> task class
TASKS: dict[str, type["RetrievalTask"]] = {}


def register_task(name: str) -> Callable:
    """Class decorator: the task trained for ``objective.name: <name>``."""

    def wrap(cls: type["RetrievalTask"]) -> type["RetrievalTask"]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"objective {name!r} registered twice")
        TASKS[name] = cls
        return cls

    return wrap


class RetrievalTask(nn.Module):
    """Base of the tasks: temperature, auxiliary losses and the encode step.

    ``corpus`` holds the encoded item features of the whole corpus (one row per item): mixed
    negatives draw items uniformly from it, the full softmax scores all of it.
    """

    #: softmax tasks learn from clicked rows only; a pointwise task needs unclicks too
    positives_only = True

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.item_id = item_id
        self.temperature = cfg.temperature
        self.corpus = corpus
        self._corpus_device: tuple[torch.device, Features] | None = None
        if cfg.in_batch_block is not None and cfg.name != "in_batch_softmax":
            raise ConfigError(f"objective.in_batch_block applies to in_batch_softmax, not {cfg.name}: "
                              "set objective.in_batch_block: null (the MovieLens fast preset sets "
                              "1024)")

    def _corpus_on(self, device: torch.device) -> Features:
        """The corpus features as tensors on ``device`` (converted once, then cached)."""
        if self._corpus_device is None or self._corpus_device[0] != device:
            self._corpus_device = (device, {k: torch.as_tensor(v).to(device)
                                            for k, v in self.corpus.items()})
        return self._corpus_device[1]

    def scale(self, model: nn.Module, scores: torch.Tensor) -> torch.Tensor:
        """Similarities -> logits: divided by the temperature (unless they already are logits)."""
        return scores if getattr(model, "scores_are_logits", False) else scores / self.temperature

    def loss(self, model: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        q = model.encode_query(batch.query)  # [B, V, D]
        i = model.encode_item(batch.item)  # [B, V, D]
        loss, logs = self.objective_loss(model, batch, step, q, i)
        auxiliary = auxiliary_loss_for(model)
        if auxiliary is not None:
            extra, extra_logs = auxiliary(model, q, i, batch, self.temperature)
            loss = loss + extra
            logs = {**logs, **extra_logs}
        return loss, logs

    def objective_loss(self, model: nn.Module, batch: Batch, step: int, q: torch.Tensor,
                       i: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # every task carries an extra-state slot, so checkpoints of any task have the same keys
    def get_extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass


class _SampledSoftmax(RetrievalTask):
    """Shared by the softmax tasks: the frequency estimator behind the log-Q correction."""

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, corpus, item_id, seed)
        self.estimator = (FrequencyEstimator(cfg.estimator.num_buckets, cfg.estimator.num_hashes,
                                             cfg.estimator.alpha) if cfg.logq_correction else None)

    def candidates(self, batch: Batch, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.estimator is not None and self.training:  # eval mode: a read-only lookup
            self.estimator.update(batch.item_ids, step)
        return in_batch_candidates(batch.item_ids, self.estimator)


@register_task("in_batch_softmax")
class InBatchSoftmaxTask(_SampledSoftmax):
    """In-batch softmax, optionally over row blocks of the batch (``objective.in_batch_block``)."""

    def objective_loss(self, model, batch, step, q, i):
        ids, log_q = self.candidates(batch, step)
        return blockwise(partial(self._in_batch, model), self.cfg.in_batch_block,
                         q, i, ids, log_q, batch.weight), {}

    def _in_batch(self, model: nn.Module, q: torch.Tensor, i: torch.Tensor, ids: torch.Tensor,
                  log_q: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor:
        """In-batch softmax over the rows given (the batch, or one block of it)."""
        if uses_plain_logits(model):
            # same loss and gradients as the plain path below, one [B, B] buffer instead of many
            return fused_in_batch_softmax(q[:, 0] / self.temperature, i[:, 0], ids, log_q,
                                          weight, self.cfg.remove_accidental_hits)
        return in_batch_softmax(self.scale(model, model.logits(q, i)), ids, log_q, weight,
                                remove_hits=self.cfg.remove_accidental_hits)


@register_task("mixed_negatives")
class MixedNegativesTask(_SampledSoftmax):
    """In-batch items plus ``objective.uniform_negatives`` uniform corpus draws per batch."""

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, corpus, item_id, seed)
        if cfg.uniform_negatives <= 0:
            raise ConfigError("objective.uniform_negatives must be > 0 for mixed_negatives")
        if corpus is None:
            raise ConfigError("mixed_negatives needs the item corpus (data.items or train items)")
        n = len(next(iter(corpus.values())))
        # sampler index j in [1, n] is corpus row j - 1 (index 0 is never drawn)
        self.sampler = UniformSampler(n + 1, cfg.uniform_negatives, seed)

    def objective_loss(self, model, batch, step, q, i):
        ids, log_q = self.candidates(batch, step)
        logits = self.scale(model, model.logits(q, i))  # [B, B]
        rows, extra_log_q = self.sampler.sample(generator=draws(self, self.sampler.generator))
        corpus = self._corpus_on(logits.device)
        pick = (rows - 1).to(logits.device)
        extra_feats = {k: v[pick] for k, v in corpus.items()}
        extra = model.encode_item(extra_feats)  # [N', V, D]
        extra_ids = extra_feats[self.item_id]
        return mixed_negative_softmax(
            self.scale(model, model.pair_logits(q, i)), logits, ids, log_q,
            self.scale(model, model.logits(q, extra)), extra_ids,
            extra_log_q.to(logits.device), batch.weight), {}

    def get_extra_state(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        if state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])


@register_task("full_softmax")
class FullSoftmaxTask(RetrievalTask):
    """Exact softmax over every corpus item at every step (``losses.full_softmax``).

    For catalogues small enough to encode whole each step (MovieLens, a few tens of thousands of
    items): the negatives are the corpus itself, so there is no sampling bias to correct and
    nothing to tune. The item tower runs on all ``N`` corpus items per batch and the logits are
    ``[B, N]``, so cost grows with ``N``; above ``MAX_ITEMS`` use ``mixed_negatives``.
    """

    MAX_ITEMS = 200_000

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, corpus, item_id, seed)
        if corpus is None:
            raise ConfigError("full_softmax needs the item corpus (data.items or train items)")
        n = len(next(iter(corpus.values())))
        if n > self.MAX_ITEMS:
            raise ConfigError(f"objective full_softmax encodes the whole corpus every step; this one "
                              f"has {n:,} items (> {self.MAX_ITEMS:,}): use mixed_negatives")

    def objective_loss(self, model, batch, step, q, i):
        corpus = self._corpus_on(q.device)
        items = model.encode_item(corpus)  # [N, V, D], with gradients: every item is trained
        return full_softmax(self.scale(model, model.pair_logits(q, i)),
                            self.scale(model, model.logits(q, items)), batch.item_ids,
                            corpus[self.item_id], batch.weight), {}


@register_task("pointwise_bce")
class PointwiseBCETask(RetrievalTask):
    """Click / unclick binary cross-entropy on row-aligned pairs."""

    positives_only = False

    def __init__(self, cfg: ObjectiveConfig, corpus: Features | None = None,
                 item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, corpus, item_id, seed)
        # cosine/temperature is centred on 0; a learned bias lets sigmoid match the click rate
        self.bias = nn.Parameter(torch.zeros(()))

    def objective_loss(self, model, batch, step, q, i):
        if batch.label is None:
            raise ConfigError("objective pointwise_bce needs data.label (click / unclick)")
        logits = self.scale(model, model.pair_logits(q, i)) + self.bias
        return binary_cross_entropy(logits, batch.label, batch.weight), {}


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
    """True when the model declares the first-vector dot product as its similarity
    (``TwoTowerModel.plain_similarity``) and its scores need the objective's temperature."""
    return (getattr(model, "plain_similarity", False)
            and not getattr(model, "scores_are_logits", False))


def build_task(cfg: ObjectiveConfig, corpus: Features | None = None, item_id: str = "item_id",
               seed: int = 0) -> RetrievalTask:
    """The registered task of ``cfg.name``."""
    if cfg.name not in TASKS:
        raise ConfigError(f"objective.name: {cfg.name!r} has no plain task (known: "
                          f"{', '.join(sorted(TASKS))}); an objective with its own data loop is "
                          "trained by its recipe (twotower.pipeline.train_run)")
    return TASKS[cfg.name](cfg, corpus, item_id, seed)
