"""Auxiliary losses a model variant adds to its objective, registered by model name.

A variant with a training signal of its own (DAT's adaptive mimic, MGDSPR's mixed hard negatives,
SINE's concept regularisation) registers, in a file of this package, a function
``(model, q [B, V, D], i [B, V, D], batch, temperature) -> (loss, logs)``; every task adds it after
the objective's loss (``temperature``: the objective's, for terms scored as logits).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from twotower.types import Batch

Auxiliary = Callable[[nn.Module, torch.Tensor, torch.Tensor, Batch, float],
                     tuple[torch.Tensor, dict[str, float]]]

#: model name -> its auxiliary loss
AUXILIARY: dict[str, Auxiliary] = {}


def register_auxiliary(model_name: str) -> Callable[[Auxiliary], Auxiliary]:
    """Decorator: add ``fn`` to the loss of every task training model ``model_name``."""

    def wrap(fn: Auxiliary) -> Auxiliary:
        if model_name in AUXILIARY and AUXILIARY[model_name] is not fn:
            raise ValueError(f"auxiliary loss of model {model_name!r} registered twice")
        AUXILIARY[model_name] = fn
        return fn

    return wrap


def auxiliary_loss_for(model: nn.Module) -> Auxiliary | None:
    return AUXILIARY.get(getattr(model, "registered_name", ""))
