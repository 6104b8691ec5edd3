"""The ``hard_negatives`` recipe: in-batch softmax plus negatives mined from the model itself.

Huang et al., "Embedding-based Retrieval in Facebook Search" (KDD 2020).

After ``warmup_epochs`` of plain in-batch training, and again every ``refresh_every`` epochs, the
batch source encodes every training query and every corpus item with the *current* model and
mines, per training row, ``draws`` items from ranks ``window`` of its retrieval — never the
row's item nor any item of its group (``group_by``: e.g. the user's other interactions), in
bounded memory (``objectives.hard_negatives.mine_hard_negatives`` scans chunks). Each batch
carries its rows' mined items in ``batch.extra``; ``HardNegativeTask`` adds them (and optional
online hard negatives) to the softmax with their own log-Q.
"""
from __future__ import annotations

import numpy as np
import torch

from twotower.config import RunConfig
from twotower.errors import ConfigError
from twotower.features.dataset import EncodedLog, ItemCorpus, as_tensors
from twotower.objectives.hard_negatives import HardNegativeTask, mine_hard_negatives
from twotower.recipes import Prepared, Recipe, register_recipe
from twotower.runs import RunData

ENCODE_ROWS = 4096


def _group_column(cfg: RunConfig) -> str | None:
    return cfg.objective.hard_negatives.group_by or cfg.eval.exclude_seen_by


class MinedLog:
    """An ``EncodedLog``'s batches (same order for the same seed and epoch) with each row's
    mined hard negatives in ``batch.extra["hard_rows"]`` / ``["hard_valid"]`` (corpus rows)."""

    def __init__(self, log: EncodedLog, corpus: ItemCorpus, cfg: RunConfig):
        self.log, self.corpus, self.cfg = log, corpus, cfg.objective.hard_negatives
        self.seed = cfg.train.seed
        self.model: torch.nn.Module | None = None
        self.mined: tuple[torch.Tensor, torch.Tensor] | None = None
        self.mined_epoch: int | None = None
        code_to_row = np.full(int(max(corpus.index.max(), log.item_index.max())) + 1, -1, np.int64)
        code_to_row[corpus.index] = np.arange(len(corpus))
        self.row_item = code_to_row[log.item_index]  # corpus row of each training row's item
        group = _group_column(cfg)
        self.groups = None
        if group is not None and group in log.raw:
            _, g = np.unique(log.raw[group], return_inverse=True)
            order = np.argsort(g, kind="stable")
            indptr = np.concatenate([[0], np.cumsum(np.bincount(g))])
            self.groups = (g, indptr, self.row_item[order])

    def __len__(self) -> int:
        return len(self.log)

    def num_batches(self, batch_size: int) -> int:
        return self.log.num_batches(batch_size)

    def _due(self, epoch: int) -> bool:
        start = self.cfg.warmup_epochs
        if self.cfg.draws == 0 or epoch < start or self.model is None:
            return False
        return self.mined is None or ((epoch - start) % self.cfg.refresh_every == 0
                                      and self.mined_epoch != epoch)

    def _positives(self, start: int, stop: int) -> torch.Tensor:
        """[C, P] corpus rows that are positives of rows start..stop (-1 padded)."""
        own = self.row_item[start:stop]
        if self.groups is None:
            return torch.from_numpy(own[:, None].copy())
        g, indptr, items = self.groups
        gs = g[start:stop]
        lengths = indptr[gs + 1] - indptr[gs]
        out = np.full((len(gs), int(lengths.max()) + 1), -1, np.int64)
        out[:, 0] = own
        for width in np.unique(lengths):  # vectorised per distinct group size
            sel = np.flatnonzero(lengths == width)
            cols = indptr[gs[sel]][:, None] + np.arange(width)[None, :]
            out[sel, 1:width + 1] = items[cols]
        return torch.from_numpy(out)

    @torch.no_grad()
    def mine(self, epoch: int) -> None:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            items = torch.cat([model.retrieval_item(model.encode_item(
                {k: v.to(device) for k, v in as_tensors(self.corpus.features, slice(s, s + ENCODE_ROWS)).items()}
            )).float().cpu() for s in range(0, len(self.corpus), ENCODE_ROWS)])
            rows, valid = [], []
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            for s in range(0, len(self.log), ENCODE_ROWS):
                q = model.retrieval_query(model.encode_query(
                    {k: v.to(device) for k, v in as_tensors(self.log.query, slice(s, s + ENCODE_ROWS)).items()}
                ))[:, 0].float().cpu()
                r, v = mine_hard_negatives(q, items, self._positives(s, s + len(q)),
                                           tuple(self.cfg.window), self.cfg.draws, self.cfg.margin,
                                           generator)
                rows.append(r)
                valid.append(v)
        finally:
            model.train(was_training)
        self.mined = (torch.cat(rows), torch.cat(valid))
        self.mined_epoch = epoch

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0):
        if self._due(epoch):
            self.mine(epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(self.log))
        for b in range(skip, self.log.num_batches(batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch = self.log.batch(idx)
            if self.mined is not None:
                batch.extra["hard_rows"] = self.mined[0][idx]
                batch.extra["hard_valid"] = self.mined[1][idx]
            yield batch

    def mined_share(self) -> float | None:
        return None if self.mined is None else float(self.mined[1].float().mean())


@register_recipe("hard_negatives")
class HardNegativeRecipe(Recipe):
    def check(self, cfg: RunConfig) -> None:
        hn = cfg.objective.hard_negatives
        first, last = hn.window
        if not 1 <= first <= last:
            raise ConfigError(f"objective.hard_negatives.window: expected 1 <= first <= last, got {hn.window}")
        if hn.group_by is not None and hn.group_by not in (cfg.eval.exclude_seen_by, cfg.eval.group_by):
            raise ConfigError("objective.hard_negatives.group_by must be eval.exclude_seen_by or "
                              f"eval.group_by (the columns a run reads besides its features), got {hn.group_by!r}")
        if cfg.objective.in_batch_block is not None:
            raise ConfigError("objective.in_batch_block applies to in_batch_softmax, not hard_negatives")

    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        if stream:
            raise ConfigError("objective hard_negatives mines over the whole training log: it cannot stream")
        log = data.train_source(True, False)
        task = HardNegativeTask(cfg.objective, corpus.features, data.features.item_id, cfg.train.seed)
        source = MinedLog(log, corpus, cfg)
        return Prepared(task, source, source.num_batches(cfg.train.batch_size), {"source": source})

    def bind(self, prepared: Prepared, model: torch.nn.Module) -> None:
        prepared.batches.model = model

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        source = prepared.state["source"]
        return {"hard_negatives": {"mined_epoch": source.mined_epoch,
                                   "rows_with_mined": source.mined_share()}}
