"""The one Trainer. It knows no model: it calls ``task.loss(model, batch, step)``.

Devices and AMP, gradient clipping, seeded determinism, a progress bar, metrics to JSONL,
validation each epoch with early stopping, checkpoints every N steps and exact resumption all
live here and nowhere else.

The validation loss (``valid.loss`` of each epoch's record) is the task's own loss over a few
fixed validation batches, computed without side effects: model and task in eval mode (a task in
eval mode updates no state and draws from no training stream, see ``objectives.tasks``), no
gradients, the global RNGs forked and restored, the modules' modes put back. Training is
therefore the same, step for step, with and without it.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from twotower.config import TrainConfig
from twotower.errors import ArtifactError
from twotower.progress import is_quiet, progress
from twotower.run import RunDir
from twotower.train.checkpoint import (list_checkpoints, load_checkpoint, load_weights,
                                       save_checkpoint, save_weights)
from twotower.types import Batch


class BatchSource(Protocol):
    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0) -> Iterator[Batch]: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArtifactError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    steps: int
    epochs_run: int
    best_metric: float | None
    best_epoch: int | None
    examples: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """``Trainer(model, task, cfg.train, run_dir).fit(data, validate=...)``.

    ``validate(model) -> dict`` is called after every epoch; ``metric`` names the value to
    maximise for early stopping and best-weights selection (ignored without ``validate``).
    """

    LOG_EVERY = 50

    def __init__(self, model: nn.Module, task: nn.Module, cfg: TrainConfig,
                 run_dir: RunDir | None = None, writes: bool = True):
        self.model, self.task, self.cfg = model, task, cfg
        self.run_dir = run_dir
        # False: resume from run_dir but write nothing there (a replica beside the writing one)
        self.writes = writes
        self.device = resolve_device(cfg.device)
        # Adam keeps decaying the moments of embedding rows a batch did not touch; after ~800
        # steps they reach the denormal range, where CPU arithmetic is several times slower.
        torch.set_flush_denormal(True)
        self.model.to(self.device)
        self.task.to(self.device)
        params = [p for p in list(model.parameters()) + list(task.parameters()) if p.requires_grad]
        # the fused kernel updates every parameter in one call: the unfused loop costs ~10 small
        # ops per parameter per step, which on a CPU is as much as the embedding tables' update
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          fused=fused or None)
        self.amp = cfg.amp and self.device.type == "cuda"
        # state that a checkpoint restores
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.examples = 0
        self.history: list[dict[str, Any]] = []

    # ---- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "task": self.task.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "examples": self.examples,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save_checkpoint(self) -> None:
        if self.run_dir is not None and self.writes:
            save_checkpoint(self.run_dir.checkpoints, self.step, self.model, self._state(),
                            keep=self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Restore the newest checkpoint of the run folder; False when there is none."""
        if self.run_dir is None:
            return False
        ckpts = list_checkpoints(self.run_dir.checkpoints)
        if not ckpts:
            return False
        st = load_checkpoint(ckpts[-1], self.model)
        try:
            self.optimizer.load_state_dict(st["optimizer"])
            self.task.load_state_dict(st["task"])
            for k in ("epoch", "batch_in_epoch", "step", "best_metric", "best_epoch",
                      "bad_epochs", "examples"):
                setattr(self, k, st[k])
            torch.set_rng_state(st["torch_rng"])
            if st["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda_rng"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise ArtifactError(f"checkpoint {ckpts[-1]}: incompatible trainer state ({err})") from None
        self.model.to(self.device)
        self.task.to(self.device)
        return True

    # ---- logging
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.run_dir is not None and self.writes:
            with open(self.run_dir.metrics_log, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- the loop
    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        self.task.train()
        batch = batch.to(self.device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            loss, logs = self.task.loss(self.model, batch, self.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower train.lr "
                                     "or check the inputs for extreme values")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            # every trained parameter (the task's too, e.g. the pointwise bias)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.examples += len(batch)
        return {"loss": float(loss.detach()), **logs}

    @torch.no_grad()
    def validation_loss(self, batches: Sequence[Batch]) -> float:
        """The task's loss over ``batches`` (mean over rows), changing nothing training reads:
        eval mode (the task's side-effect-free loss), no gradients, the global torch RNGs
        (CPU and CUDA) restored afterwards, and each module's train/eval mode put back."""
        modes = [(m, m.training) for m in (self.model, self.task)]
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        total, rows = 0.0, 0
        try:
            self.model.eval()
            self.task.eval()
            with torch.random.fork_rng(devices=devices), ctx:
                # a loss that draws from the global RNG (MGDSPR's mixing weights) repeats every epoch
                torch.manual_seed(self.cfg.seed)
                for batch in batches:
                    loss, _ = self.task.loss(self.model, batch.to(self.device), self.step)
                    total += float(loss) * len(batch)
                    rows += len(batch)
        finally:
            for module, training in modes:
                module.train(training)
        return total / rows if rows else float("nan")

    def fit(self, data: BatchSource, validate: Callable[[nn.Module], dict] | None = None,
            metric: str | None = None, resume: bool = False,
            num_batches: int | None = None,
            validation_batches: Sequence[Batch] | None = None) -> TrainResult:
        """Train (and validate) with ``train.threads`` torch CPU threads; the process's thread
        count is restored when fit returns or fails, so a run does not change it for the caller.
        ``validation_batches``: the batches whose loss is logged after every epoch."""
        threads_before = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._fit(data, validate, metric, resume, num_batches, validation_batches or [])
        finally:
            torch.set_num_threads(threads_before)

    def _fit(self, data: BatchSource, validate: Callable[[nn.Module], dict] | None,
             metric: str | None, resume: bool, num_batches: int | None,
             validation_batches: Sequence[Batch]) -> TrainResult:
        if not (resume and self.resume()):  # nothing to resume: start as a fresh run would
            seed_everything(self.cfg.seed)
        best_path = self.run_dir.root / "best.safetensors" if self.run_dir and self.writes else None
        best_state: dict[str, torch.Tensor] | None = None
        train_seconds = 0.0
        stop = False
        patience = self.cfg.early_stopping_patience if validate is not None else None
        # (checked before each epoch too: a resumed run that had already stopped early stays stopped)
        while (self.epoch < self.cfg.epochs and not stop
               and (patience is None or self.bad_epochs < patience)):
            t0 = time.perf_counter()
            running, n_logged, examples_before = 0.0, 0, self.examples
            batches = data.batches(self.cfg.batch_size, epoch=self.epoch, seed=self.cfg.seed,
                                   skip=self.batch_in_epoch)
            bar = progress(batches, total=num_batches, initial=self.batch_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch",
                           enabled=self.cfg.progress, delay=0)
            for batch in bar:
                logs = self.train_step(batch)
                self.batch_in_epoch += 1
                running += logs["loss"]
                n_logged += 1
                if self.step % self.LOG_EVERY == 0:
                    self._log({"step": self.step, "epoch": self.epoch, **logs})
                    bar.set_postfix(loss=f"{running / n_logged:.4f}")
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                    stop = True
                    break
            train_seconds += time.perf_counter() - t0
            if stop:  # max_steps mid-epoch: record it and keep the exact state for a later resume
                self._log({"epoch": self.epoch, "step": self.step,
                           "train_loss": running / max(n_logged, 1),
                           "seconds": time.perf_counter() - t0, "stopped": "max_steps"})
                self.save_checkpoint()
                break
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                      "train_loss": running / max(n_logged, 1),
                                      "seconds": time.perf_counter() - t0}
            if validate is not None:
                scores = validate(self.model)
                record["valid"] = scores
                value = scores.get(metric) if metric else None
                if value is not None and not math.isnan(value):
                    if self.best_metric is None or value > self.best_metric:
                        self.best_metric, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                        if best_path is not None:
                            save_weights(self.model, best_path)
                        else:
                            best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    else:
                        self.bad_epochs += 1
            if validation_batches:  # after model selection: the loss is not a metric to maximise
                record["valid"] = {**record.get("valid", {}),
                                   "loss": self.validation_loss(validation_batches)}
            self._log(record)
            if self.cfg.progress and not is_quiet():
                print(epoch_line(record, self.cfg.epochs, metric,
                                 (self.examples - examples_before) / max(record["seconds"], 1e-9)),
                      file=sys.stderr, flush=True)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save_checkpoint()
            if (self.cfg.early_stopping_patience is not None and validate is not None
                    and self.bad_epochs >= self.cfg.early_stopping_patience):
                break
        # finish on the best validated weights
        if best_path is not None and best_path.is_file() and self.best_epoch is not None:
            load_weights(self.model, best_path)
        elif best_state is not None:
            self.model.load_state_dict(best_state)
        if self.run_dir is not None and self.writes:
            save_weights(self.model, self.run_dir.weights)
        return TrainResult(self.step, self.epoch, self.best_metric, self.best_epoch,
                           self.examples, train_seconds, self.history)


def epoch_line(record: dict[str, Any], epochs: int, metric: str | None, per_second: float) -> str:
    """One line per epoch — what a log file (nohup, CI, a scheduler) keeps, where no bar shows."""
    parts = [f"epoch {record['epoch'] + 1}/{epochs}", f"loss {record['train_loss']:.4f}"]
    valid = record.get("valid") or {}
    if isinstance(valid.get("loss"), (int, float)):
        parts.append(f"valid loss {valid['loss']:.4f}")
    if metric and isinstance(valid.get(metric), (int, float)):
        parts.append(f"valid {metric} {valid[metric]:.4f}")
    parts.append(f"{per_second:,.0f} examples/s")
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
