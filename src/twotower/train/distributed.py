"""Data-parallel training on PyTorch distributed: the one module that knows ranks.

``torchrun --nproc-per-node N -m twotower train CFG`` (or ``twotower train CFG --nproc N``, which
starts torchrun on this machine) runs N copies of the one training pipeline: gloo on CPU, NCCL on
CUDA (one GPU per local rank). As in TorchRec, the Trainer and the models know nothing of ranks;
this module gives the pipeline three things:

- ``current_world()``: this process's rank and the world size (a world of one outside torchrun),
  with the process group initialised from torchrun's environment;
- ``data_parallel(task, batches, ...)``: the task's loss with **cross-rank in-batch negatives**
  and the batches of this rank's shard;
- collectives the pipeline needs around training (a barrier, the summed throughput).

Cross-rank negatives. Each rank encodes its own ``B`` rows (the towers run under
``DistributedDataParallel``, so gradients are averaged across ranks in buckets during backward);
the item vectors are all-gathered **with gradient** (``torch.distributed.nn.functional.all_gather``,
whose backward sums each rank's gradient back to the rank that produced the rows), so every query
meets all ``W * B`` items of the global batch as candidates. Labels follow the gathered layout:
rank ``r``'s row ``j`` has its positive at column ``r * B + j`` (the misalignment
sentence-transformers shipped and fixed in PR #3453). Accidental hits — another row's item that
equals the row's own positive, on any rank — are masked against the gathered ids. The streaming
frequency estimator (log-Q) is updated with the gathered ids on every rank, so all ranks hold the
same estimator, equal to a single process's over the concatenated batch (the all-gather of ids is
the reduction of its updates: one process's update of a global batch is a function of all its
ids). Rank ``r``'s loss is the sum of its rows' weighted cross-entropies over the global weight,
times ``W``; DDP's gradient average over ranks then gives exactly the gradient of the
single-process loss over the concatenated batch (tests/train/test_distributed.py checks loss and
gradients against it), and the value returned is that global loss.

Shards. In memory, every epoch's permutation is the single-process one (seeded by seed and epoch);
global batch ``g`` holds rows ``[g * W * B, (g + 1) * W * B)`` of it and rank ``r`` takes its
``r``-th ``B`` of them, so a ``W``-rank run with ``train.batch_size: B`` trains on exactly the
batches of a one-process run with ``W * B``. Streamed (``--stream``), rank ``r`` encodes the
chunks (row groups) ``n`` with ``n % W == r`` and the ranks step in lockstep (a step runs only
while every rank still has a batch). Rank 0 alone writes (checkpoints, metrics, weights, the
export); every rank resumes from the newest checkpoint. A checkpoint at an epoch end resumes
exactly on any world size; one taken mid-epoch resumes at the same step of the epoch, which on a
different world size is a different row position.

What it trains: ``objective.name: in_batch_softmax`` with models whose similarity is the plain
first-vector product (DSSM, YouTube DNN, ...), without ``in_batch_block``, ``ssl`` or an
auxiliary loss; anything else is refused with a ConfigError before training starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from twotower.errors import ConfigError
from twotower.features.dataset import EncodedLog, StreamingLog
from twotower.objectives.auxiliary import auxiliary_loss_for
from twotower.objectives.losses import logq_correct, remove_accidental_hits
from twotower.objectives.negatives import in_batch_candidates
from twotower.objectives.tasks import InBatchSoftmaxTask, uses_plain_logits
from twotower.types import Batch


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum_and_max(self, total: float, longest: float) -> tuple[float, float]:
        """(sum of ``total`` over ranks, max of ``longest`` over ranks)."""
        if not self.distributed:
            return total, longest
        t = torch.tensor([total, -longest], dtype=torch.float64)
        s = t[:1].clone()
        dist.all_reduce(s, op=dist.ReduceOp.SUM)
        m = t[1:].clone()
        dist.all_reduce(m, op=dist.ReduceOp.MIN)
        return float(s), -float(m)


def current_world() -> World:
    """The world of this process: torchrun's (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``), the
    process group initialised once (NCCL when CUDA is available, else gloo), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)  # "cuda" then names this rank's GPU
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` [B, ...] concatenated in rank order [W * B, ...], gradient flowing back
    to each rank's rows (the backward sums every rank's gradient of them)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_values(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` [B, ...] concatenated in rank order, without gradient (ids, weights)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _Towers(nn.Module):
    """Both towers as one forward, the unit DistributedDataParallel synchronises."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, query: dict, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_query(query), self.model.encode_item(item)


class CrossRankSoftmax(nn.Module):
    """The in-batch softmax of ``task`` over the global batch of all ranks (module docstring).

    Its state is the wrapped task's (same checkpoint keys as a one-process run, so a run resumes
    on any world size); the DDP wrapper of the model is built at the first step, once the Trainer
    has put the model on its device."""

    def __init__(self, task: InBatchSoftmaxTask, world: World):
        super().__init__()
        self.inner = task
        self.world = world
        self.__dict__["_towers"] = None  # not a submodule: the model's parameters stay the model's

    @property
    def positives_only(self) -> bool:
        return self.inner.positives_only

    # the wrapped task's state, under its own keys
    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    def _ddp(self, model: nn.Module) -> nn.Module:
        towers = self.__dict__["_towers"]
        if towers is None or towers.module.model is not model:
            device = next(model.parameters()).device
            towers = nn.parallel.DistributedDataParallel(
                _Towers(model), device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False)
            self.__dict__["_towers"] = towers
        return towers

    def loss(self, model: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.training:  # a validation loss: this rank's batch alone, no collective, no update
            return self.inner.loss(model, batch, step)
        task, world = self.inner, self.world
        q, i = self._ddp(model)(batch.query, batch.item)  # this rank's rows [B, V, D]
        rows = q.shape[0]
        items = gather_rows(i)  # [W * B, V, D], every rank's items as candidates
        ids = gather_values(batch.item_ids)
        if task.estimator is not None:  # same global ids on every rank: the same estimator
            task.estimator.update(ids, step)
        ids, log_q = in_batch_candidates(ids, task.estimator)
        logits = task.scale(model, model.logits(q, items))  # [B, W * B]
        if task.cfg.logq_correction:
            logits = logq_correct(logits, log_q)
        positive = world.rank * rows + torch.arange(rows, device=logits.device)
        if task.cfg.remove_accidental_hits:
            logits = remove_accidental_hits(logits, batch.item_ids, ids, positive)
        ce = F.cross_entropy(logits.float(), positive, reduction="none")  # [B]
        if batch.weight is None:
            local = ce.mean()  # = W * (sum of this rank's rows) / (W * B)
        else:
            w = batch.weight.to(ce.dtype)
            total = gather_values(w).sum()
            total = torch.where(total > 0, total, torch.ones_like(total))
            local = world.size * (w * ce).sum() / total
        reported = local.detach().clone()
        dist.all_reduce(reported)
        # the global loss as the value, this rank's share as the gradient (DDP averages them)
        return local + (reported / world.size - local.detach()), {}


class RankShard:
    """Rank ``rank``'s ``batch_size`` rows of each global batch of an in-memory log."""

    def __init__(self, log: EncodedLog, world: World):
        self.log, self.world = log, world

    def num_batches(self, batch_size: int) -> int:
        return len(self.log) // (batch_size * self.world.size)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self.log))  # EncodedLog's
        span = batch_size * self.world.size
        start = self.world.rank * batch_size
        for g in range(skip, self.num_batches(batch_size)):
            yield self.log.batch(order[g * span + start:g * span + start + batch_size])


class LockstepStream:
    """Rank ``rank``'s chunks of a streamed log; a step runs only while every rank has a batch."""

    def __init__(self, stream: StreamingLog, world: World):
        self.world = world
        self.stream = StreamingLog(stream.reader, stream.split, stream.positives_only,
                                   keep_chunk=lambda n: n % world.size == world.rank)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        it = self.stream.batches(batch_size, epoch, seed, skip)
        while True:
            batch = next(it, None)
            more = torch.tensor([0 if batch is None else 1])
            dist.all_reduce(more, op=dist.ReduceOp.MIN)
            if not int(more):
                return
            yield batch


def check_config(cfg) -> None:
    """Refuse, before any process starts, a run config data-parallel training cannot train."""
    obj = cfg.objective
    if obj.name != "in_batch_softmax":
        raise ConfigError(f"objective.name {obj.name!r}: data-parallel training (--nproc / "
                          "torchrun) trains in_batch_softmax only; train it in one process")
    if obj.in_batch_block is not None:
        raise ConfigError("objective.in_batch_block: data-parallel training softmaxes over the whole "
                          "global batch; set objective.in_batch_block: null")
    if obj.ssl is not None:
        raise ConfigError("objective.ssl: not supported by data-parallel training; train it in one "
                          "process")


def data_parallel(task: nn.Module, batches, model: nn.Module, world: World,
                  batch_size: int) -> tuple[nn.Module, object, int | None]:
    """(cross-rank task, this rank's batches, batches per epoch or None) for ``world``."""
    if type(task) is not InBatchSoftmaxTask:  # check_config refused the others already
        raise ConfigError(f"data-parallel training supports the in_batch_softmax task, not "
                          f"{type(task).__name__}")
    if task.cfg.in_batch_block is not None:
        raise ConfigError("objective.in_batch_block: data-parallel training softmaxes over the whole "
                          "global batch; set objective.in_batch_block: null")
    if not uses_plain_logits(model) or auxiliary_loss_for(model) is not None:
        raise ConfigError(f"model {getattr(model, 'registered_name', type(model).__name__)!r}: "
                          "data-parallel training needs the plain first-vector similarity and no "
                          "auxiliary loss (DSSM, YouTube DNN, ...); train it in one process")
    if isinstance(batches, EncodedLog):
        shard = RankShard(batches, world)
        if shard.num_batches(batch_size) == 0:
            raise ConfigError(f"train.batch_size {batch_size} x {world.size} ranks is more than the "
                              f"{len(batches):,} training rows: lower train.batch_size")
        return CrossRankSoftmax(task, world), shard, shard.num_batches(batch_size)
    if isinstance(batches, StreamingLog):
        return CrossRankSoftmax(task, world), LockstepStream(batches, world), None
    raise ConfigError(f"data-parallel training cannot shard a {type(batches).__name__} batch source")


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``twotower ARGS`` as ``nproc`` processes of one job on this machine (torchrun,
    standalone rendezvous on loopback); returns the job's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "twotower", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores (torchrun's default too)
    return subprocess.call(cmd, env=env)
