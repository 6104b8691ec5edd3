"""Negative candidates, always returned with their log-Q.

Every sampler returns ``(item_ids, log_q)`` together, so a log-Q correction can never be applied
without the matching Q. ``log_q`` is the log of the expected number of times the candidate appears
among one batch's candidates; the in-batch and uniform kinds use this same unit so they can be
mixed (mixed negative sampling) and corrected consistently.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from twotower.errors import ConfigError
from twotower.objectives.frequency import FrequencyEstimator

#: seed of the draws a task makes in eval mode (see ``draws``)
EVAL_SEED = 0


def draws(module: torch.nn.Module, generator: torch.Generator) -> torch.Generator:
    """The generator a task draws its random candidates / views from: its own training stream in
    train mode; in eval mode a fresh one of a fixed seed, so that a validation loss neither
    advances the training stream (training stays identical with and without validation) nor
    varies from one validation pass to the next."""
    return generator if module.training else torch.Generator().manual_seed(EVAL_SEED)


def in_batch_candidates(
    item_ids: torch.Tensor, estimator: FrequencyEstimator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's own items as candidates: ``(ids[B], log_q[B])``.

    ``log_q = log p`` from ``estimator`` (expected occurrences per batch); zeros when
    ``estimator`` is None, which makes the correction a no-op. Call
    ``estimator.update(item_ids, step)`` first, as Algorithm 2 of Yi et al. (RecSys 2019) updates
    the estimate with the current batch before reading it.
    """
    if estimator is None:
        return item_ids, torch.zeros(item_ids.shape, device=item_ids.device)
    return item_ids, estimator.log_q(item_ids).to(item_ids.device)


class UniformSampler:
    """``num_samples`` uniform draws, with replacement, over encoded items ``[1, num_items)``.

    Index 0 is reserved for padding / out-of-vocabulary and is never drawn. Each id is expected
    ``num_samples / (num_items - 1)`` times per batch, so ``log_q`` is the log of that: the same
    unit as ``FrequencyEstimator.log_q``. The draws come from a CPU ``torch.Generator`` (the same
    stream on every device) whose state is saved by ``state_dict``.
    """

    def __init__(self, num_items: int, num_samples: int, seed: int = 0) -> None:
        if num_items < 2:
            raise ConfigError(
                f"uniform negatives need an item besides padding index 0, got num_items={num_items}"
            )
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        self.num_items = num_items
        self.num_samples = num_samples
        self.generator = torch.Generator().manual_seed(seed)
        self._log_q = math.log(num_samples / (num_items - 1))

    def sample(self, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids[N], log_q[N])`` with ``N = num_samples``, drawn from the sampler's own stream
        (or from ``generator``, which leaves that stream where it was)."""
        ids = torch.randint(1, self.num_items, (self.num_samples,),
                            generator=self.generator if generator is None else generator)
        ids = ids.to(device) if device is not None else ids
        return ids, torch.full(ids.shape, self._log_q, device=ids.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
