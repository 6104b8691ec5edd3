"""Data-parallel training (train/distributed.py) with 2 gloo processes on CPU: cross-rank in-batch
negatives give the single-process loss and gradients over the concatenated batch; a 2-rank run
trains the batches of a 1-process run of twice the batch size, checkpoints from rank 0 only and
resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.numpy import load_file

from conftest import tiny_sections

ROWS, WORLD = 12, 2  # rows per rank


def _model_and_task():
    from twotower.config import FeatureConfig, ModelConfig, ObjectiveConfig
    from twotower.models import build_model
    from twotower.objectives import tasks
    from twotower.types import FieldSpec, Side

    schema = {"user_id": FieldSpec(FeatureConfig(name="u", side="query").kind, Side.QUERY, 20, "user_id", 8),
              "item_id": FieldSpec(FeatureConfig(name="i", side="item").kind, Side.ITEM, 12, "item_id", 8)}
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dssm", embedding_dim=8, hidden=[16], output_dim=8), schema)
    task = tasks.build_task(ObjectiveConfig(temperature=0.1), None, "item_id")  # log-Q, hit removal
    return model, task


def _global_batch():
    """2 * ROWS rows; 10 item ids for 24 rows, so accidental hits fall within and across ranks."""
    from twotower.features.encoders import FIRST_ID
    from twotower.types import Batch

    g = torch.Generator().manual_seed(1)
    n = ROWS * WORLD
    items = torch.randint(FIRST_ID, 12, (n,), generator=g)
    users = torch.randint(FIRST_ID, 20, (n,), generator=g)
    weight = torch.rand(n, generator=g) + 0.5
    return Batch(query={"user_id": users}, item={"item_id": items}, item_ids=items, weight=weight)


def _rows(batch, part):
    from twotower.types import Batch

    take = lambda d: {k: v[part] for k, v in d.items()}  # noqa: E731
    return Batch(query=take(batch.query), item=take(batch.item), item_ids=batch.item_ids[part],
                 weight=batch.weight[part])


def _rank_step(rank: int, store: str, out: str) -> None:
    """One rank: two steps of the cross-rank loss (the second sees the first's estimator)."""
    import torch.distributed as dist

    from twotower.train.distributed import CrossRankSoftmax, World

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    model, task = _model_and_task()
    cross = CrossRankSoftmax(task, World(rank, WORLD))
    batch = _rows(_global_batch(), slice(rank * ROWS, (rank + 1) * ROWS))
    losses = []
    for step in (1, 2):
        model.zero_grad()
        loss, _ = cross.loss(model, batch, step)
        loss.backward()
        losses.append(float(loss))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"losses": losses, "grads": grads, "estimator": dict(task.estimator.state_dict())},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    mp.start_processes(_rank_step, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    model, task = _model_and_task()
    batch = _global_batch()
    want = []
    for step in (1, 2):
        model.zero_grad()
        loss, _ = task.loss(model, batch, step)  # one process, the concatenated batch
        loss.backward()
        want.append(float(loss.detach()))
    hits = (batch.item_ids[:ROWS, None] == batch.item_ids[None, ROWS:]).sum()
    assert hits > 0  # some rank-0 positives are rank-1 candidates: masked across ranks
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        np.testing.assert_allclose(got["losses"], want, rtol=1e-5)
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6,
                                           msg=f"rank {rank}: gradient of {name}")
        for name, v in task.estimator.state_dict().items():  # log-Q state as one process's
            torch.testing.assert_close(got["estimator"][name], v, msg=name)


def test_labels_follow_the_gathered_layout():
    """Rank 1's rows must have their positives at columns B..2B-1: the cross-entropy of a
    shifted layout (positives at 0..B-1, sentence-transformers #3453) differs from one process's."""
    from twotower.train.distributed import RankShard, World
    from twotower.features.dataset import EncodedLog

    n = 40
    log = EncodedLog({"user_id": np.arange(n)}, {"item_id": np.arange(n) + 100}, np.arange(n) + 100)
    one = [b.item_ids.tolist() for b in log.batches(8, epoch=3, seed=7)]
    shards = [list(RankShard(log, World(r, 2)).batches(4, epoch=3, seed=7)) for r in range(2)]
    assert len(one) == len(shards[0]) == len(shards[1]) == RankShard(log, World(0, 2)).num_batches(4)
    for g, whole in enumerate(one):  # rank r holds the r-th half of the 1-process batch
        assert shards[0][g].item_ids.tolist() + shards[1][g].item_ids.tolist() == whole
    resumed = list(RankShard(log, World(1, 2)).batches(4, epoch=3, seed=7, skip=2))
    assert [b.item_ids.tolist() for b in resumed] == [b.item_ids.tolist() for b in shards[1][2:]]


def test_refused_configs(tiny_config, tmp_path):
    from twotower.errors import ConfigError
    from twotower.train.distributed import check_config

    check_config(tiny_config(tmp_path / "a"))
    for objective in ({"name": "mixed_negatives", "uniform_negatives": 8},
                      {"in_batch_block": 16}):
        with pytest.raises(ConfigError, match="objective"):
            check_config(tiny_config(tmp_path / "b", objective=objective))
    # the CLI refuses before starting any process (no run folder appears)
    from typer.testing import CliRunner

    from twotower.cli import app

    cfg = tiny_config(tmp_path / "c", objective={"in_batch_block": 16})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    r = CliRunner().invoke(app, ["train", str(path), "--nproc", "2"])
    assert r.exit_code == 1 and "in_batch_block" in r.output and not (tmp_path / "c").exists()


def _train(args: list[str], env: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "twotower", "train", *args, "--no-report"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_process_run_matches_one_process_run_and_resumes(sim_dir, tmp_path):
    """`twotower train --nproc 2` at batch 32 trains the batches of one process at batch 64: same
    weights (to float rounding), same metrics; stopped by max_steps and resumed, rank 0 alone
    having written checkpoints, it ends where an uninterrupted run does."""
    from twotower.presets import simulator_config

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
           "OMP_NUM_THREADS": "1"}

    def config(name: str, batch: int, **train) -> Path:
        secs = tiny_sections(batch_size=batch, epochs=2, **train)
        cfg = simulator_config(sim_dir, tmp_path / name, **secs)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        return path

    from twotower.pipeline import train_run

    train_run(simulator_config(sim_dir, tmp_path / "one", **tiny_sections(batch_size=64, epochs=2)))
    _train([str(config("two", 32, max_steps=3)), "--nproc", "2"], env)
    two = tmp_path / "two"
    ckpts = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert ckpts and ckpts[-1] == "step_000000003"  # rank 0 wrote them; no rank-1 files
    steps_first = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    cfg_path = two / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["max_steps"] = None
    cfg_path.write_text(yaml.safe_dump(cfg))
    _train(["--resume", str(two), "--nproc", "2"], env)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)
    ma = json.loads((tmp_path / "one" / "metrics.json").read_text())
    mb = json.loads((two / "metrics.json").read_text())
    numbers = [k for k, v in ma.items() if isinstance(v, float)]
    assert numbers
    for key in numbers:
        assert abs(ma[key] - mb[key]) < 0.01, key
    report = json.loads((two / "report.json").read_text())
    assert report["train"]["world_size"] == 2 and steps_first[-1] == 3
