"""Which fields a SENet run relies on: its mean learned squeeze-excitation weights
(``twotower fields RUN_DIR``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from twotower.errors import ConfigError
from twotower.features.dataset import as_tensors
from twotower.models.senet import SENetTwoTower
from twotower.runs import load_run
from twotower.types import Side


@torch.no_grad()
def mean_field_weights(run_dir: str | Path, split: str = "valid", max_rows: int = 20_000
                       ) -> dict[str, dict[str, float]]:
    """Mean SE field weight of every field of a trained SENet run.

    Query fields are averaged over (up to ``max_rows``) rows of ``split`` (falling back to train),
    item fields over the item corpus. Returns ``{"query": {field: w}, "item": {field: w}}``."""
    run = load_run(run_dir)
    model = run.model
    if not isinstance(model, SENetTwoTower):
        raise ConfigError(f"{run.root}: model {run.config.model.name!r} has no field weights "
                          "(only SENet models learn them)")
    log = None
    for s in (split, "train"):
        if run.data.reader.path(s) is not None:
            log = run.data.reader.load(s)
            break
    rows = np.arange(min(len(log), max_rows))
    wq = model.field_weights(as_tensors(log.query, rows), Side.QUERY).mean(0)
    wi = model.field_weights(run.corpus().tensors(slice(0, max_rows)), Side.ITEM).mean(0)
    return {"query": {n: float(w) for n, w in zip(model.query_fields, wq)},
            "item": {n: float(w) for n, w in zip(model.item_fields, wi)}}
