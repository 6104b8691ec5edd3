"""Data-parallel training, 1 -> 2 processes on the same machine (issue 19): examples/s and metrics.

Simulates a sponsored-search log, then trains the simulator preset (DSSM, in-batch softmax with
log-Q) with ``twotower train`` three ways, all on this machine's cores and all on the same global
batch (so they train the same batches, train/distributed.py):

- ``1 process, 2 threads`` (the baseline: one process using both cores), batch 2B;
- ``1 process, 1 thread``, batch 2B;
- ``2 processes x 1 thread`` (``--nproc 2``, gloo, cross-rank negatives), batch B per process.

examples/s is the run's ``report.json`` figure (every rank's rows over the slowest rank's
training-loop time; validation and start-up excluded); wall s is the whole command. The ratios
are against the baseline of the same run. On one machine the processes share its cores and
memory bandwidth, so this measures the overhead of the data-parallel path (gather, gradient
all-reduce) against using the same cores with threads, not a cluster's scaling.

Usage: python bench/ddp_scaling.py [--impressions 300000] [--batch 512] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def write_config(data: Path, run: Path, batch: int, epochs: int, threads: int) -> Path:
    from twotower.presets import simulator_config

    cfg = simulator_config(data, run, train={"epochs": epochs, "batch_size": batch,
                                             "threads": threads, "progress": False,
                                             "early_stopping_patience": None})
    path = run.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def train(cfg: Path, run: Path, nproc: int) -> dict:
    cmd = [sys.executable, "-m", "twotower", "train", str(cfg), "--no-report", "--overwrite"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    report = json.loads((run / "report.json").read_text())["train"]
    metrics = json.loads((run / "metrics.json").read_text())
    return {"examples_per_s": report["examples_per_second"], "steps": report["steps"],
            "world_size": report.get("world_size", 1), "wall_s": wall,
            "metrics": {k: v for k, v in metrics.items() if k in ("hr@50", "recall@50", "ndcg@50", "mrr")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=512, help="per-process batch of the 2-process run")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ddp_scaling.json")
    args = ap.parse_args()
    from twotower.data.simulator import SimulatorConfig, simulate

    runs = {  # name -> (processes, threads per process, batch per process)
        "1 process, 2 threads": (1, 2, 2 * args.batch),
        "1 process, 1 thread": (1, 1, 2 * args.batch),
        "2 processes x 1 thread": (2, 1, args.batch),
    }
    res = {"impressions": args.impressions, "global_batch": 2 * args.batch, "epochs": args.epochs,
           "cpus": os.cpu_count(), "baseline": next(iter(runs)), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        simulate(SimulatorConfig(n_impressions=args.impressions), data)
        for i, (name, (nproc, threads, batch)) in enumerate(runs.items()):
            run = Path(tmp) / f"run{i}"
            r = train(write_config(data, run, batch, args.epochs, threads), run, nproc)
            res["runs"][name] = {"processes": nproc, "threads_per_process": threads,
                                 "batch_per_process": batch, **r}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))  # after each run: a partial table survives
    base = res["runs"][res["baseline"]]["examples_per_s"]
    print(f"simulator, {args.impressions:,} impressions, {args.epochs} epochs, global batch "
          f"{2 * args.batch}; x = examples/s over {res['baseline']!r} of this run")
    print(f"{'run':<24} {'examples/s':>10} {'x':>6} {'steps':>6} {'wall s':>7}  metrics")
    for name, r in res["runs"].items():
        r["ratio"] = r["examples_per_s"] / base
        print(f"{name:<24} {r['examples_per_s']:>10.0f} {r['ratio']:>6.2f} {r['steps']:>6} "
              f"{r['wall_s']:>7.1f}  {json.dumps(r['metrics'])}")
    args.out.write_text(json.dumps(res, indent=2))
    from plots import plot_results

    plot_results("ddp_scaling", res, args.out)


if __name__ == "__main__":
    main()
