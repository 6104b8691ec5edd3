"""MOBIUS training throughput (issue 17): impressions/s and peak memory of the MOBIUS recipe
before and after the mining rework, measured in the same run on the same simulated log.

"before" trains with the library as it was at ``--baseline-rev`` (its ``src/`` extracted from git
into the work folder); "after" with this tree. Every contender is a fresh process (its peak RSS is
its own) that trains ``--impressions-per-run`` impressions with bad-case mining from the first
step (warm-up 0: every step pays for mining) and one torch thread unless the row says otherwise.
Writes bench/results/mobius_speed.json and mobius_speed.png.

    .venv/bin/python bench/mobius_speed.py [--impressions 300000] [--ads 50000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: label -> (tree, batch size, objective.mobius overrides, torch threads, train overrides)
CONTENDERS = {
    "before: batch 512 (Algorithm 1 mining, baseline rev)": ("baseline", 512, {}, 1, {}),
    "after: batch 512": ("this", 512, {}, 1, {}),
    "after: batch 2048, cross_join_block 512": ("this", 2048, {"cross_join_block": 512}, 1, {}),
    "after: batch 4096, cross_join_block 512": ("this", 4096, {"cross_join_block": 512}, 1, {}),
    "after: batch 4096, cross_join_block 512, 2 threads": ("this", 4096, {"cross_join_block": 512},
                                                           2, {}),
    "no mining (CTR two-tower), batch 4096": ("this", 4096, {"mode": "paper", "bad_cases": "none"},
                                              1, {}),
}


def worker(spec: dict) -> None:
    """One contender, in its own process: train, print a JSON line."""
    import resource

    from twotower.pipeline import train_run
    from twotower.presets import mobius_simulator_config

    mob = {"mode": "v2", "warmup_steps": 0, **spec["mobius"]}
    cfg = mobius_simulator_config(
        spec["data"], spec["run"], objective={"name": "mobius", "mobius": mob},
        train={"epochs": 1, "batch_size": spec["batch"], "progress": False, "seed": 0,
               "early_stopping_patience": None, "threads": spec["threads"],
               "max_steps": max(1, spec["impressions"] // spec["batch"]), **spec["train"]},
        eval={"ks": [10, 50, 100], "metric": "recall@50"})
    for f in cfg.data.features:  # the scaled bench's hash tables (bench/mobius.py)
        if f.kind.value == "text":
            f.num_buckets = 4096
    s = train_run(cfg, overwrite=True)
    rep = json.loads((Path(spec["run"]) / "report.json").read_text())
    print(json.dumps({"impressions_per_second": s.train.examples_per_second,
                      "train_seconds": s.train.seconds, "impressions": s.train.examples,
                      "mining_share_of_training": rep["mobius"]["mining_share_of_training"],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def baseline_src(rev: str, work: Path, repo: str) -> Path:
    """``src/`` of the library at git revision ``rev``, extracted once into the work folder."""
    sha = subprocess.run(["git", "-C", repo, "rev-parse", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = work / f"src_{sha[:12]}"
    if not (dest / "src" / "twotower").is_dir():
        tar = subprocess.run(["git", "-C", repo, "archive", sha, "src"], check=True,
                             capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
    return dest / "src"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000, help="simulated log size")
    ap.add_argument("--ads", type=int, default=50_000)
    ap.add_argument("--impressions-per-run", type=int, default=200_000)
    ap.add_argument("--baseline-rev", default="d8eb93c",
                    help="the library before the mining rework (main when issue 17's speed work began)")
    ap.add_argument("--repo", default=str(ROOT), help="the git repository holding --baseline-rev")
    ap.add_argument("--only", default="", help="comma-separated substrings of contender labels")
    ap.add_argument("--workdir", default="/tmp/twotower_bench_mobius_speed")
    ap.add_argument("--data", default="/tmp/twotower_bench_mobius_v2/data",
                    help="the simulated log (bench/mobius.py's world; simulated when missing)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mobius_speed.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    from twotower.data.simulator import SimulatorConfig, load_config, simulate
    from twotower.run import atomic_write_text

    work = Path(args.workdir)
    data = Path(args.data)
    sim = SimulatorConfig(n_impressions=args.impressions, n_ads=args.ads, n_queries=20_000,
                          n_users=50_000, n_advertisers=2_000, holdout_share=0.02)
    if not (data / "simulator.json").is_file() or load_config(data) != sim:
        simulate(sim, data)
    import twotower

    # "after": the library this process imports (the tree under test, maybe a snapshot of it)
    trees = {"this": Path(twotower.__file__).resolve().parents[1],
             "baseline": baseline_src(args.baseline_rev, work, args.repo)}
    only = [s for s in args.only.split(",") if s]
    res = {"simulator": sim.model_dump(), "baseline_rev": args.baseline_rev,
           "impressions_per_run": args.impressions_per_run, "cpu_count": os.cpu_count(),
           "rows": {}}
    for label, (tree, batch, mob, threads, train) in CONTENDERS.items():
        if only and not any(s in label for s in only):
            continue
        spec = {"data": str(data), "run": str(work / "runs" / str(len(res["rows"]))),
                "batch": batch, "mobius": mob, "threads": threads, "train": train,
                "impressions": args.impressions_per_run}
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                             env={**os.environ, "PYTHONPATH": str(trees[tree])},
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{label}: failed\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        res["rows"][label] = {**row, "tree": tree, "batch_size": batch, "threads": threads,
                              "mobius": mob, "wall_seconds": time.perf_counter() - t}
        print(f"{label:<56} {row['impressions_per_second']:>9,.0f} imp/s  "
              f"mining {row['mining_share_of_training']:.0%}  peak {row['peak_rss_gb']:.2f} GB",
              flush=True)
    base = next((r for k, r in res["rows"].items() if r["tree"] == "baseline"), None)
    if base:
        for r in res["rows"].values():
            r["speedup_vs_before"] = r["impressions_per_second"] / base["impressions_per_second"]
    print(format_table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=2))
    plot(res, out.with_suffix(".png"))


def format_table(res: dict) -> str:
    lines = [f"{'contender':<56}{'imp/s':>10}{'x before':>10}{'mining':>8}{'peak GB':>9}"]
    for k, r in res["rows"].items():
        lines.append(f"{k:<56}{r['impressions_per_second']:>10,.0f}"
                     f"{r.get('speedup_vs_before', float('nan')):>10.2f}"
                     f"{r['mining_share_of_training']:>8.0%}{r['peak_rss_gb']:>9.2f}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(list(rows), [r["impressions_per_second"] for r in rows.values()])
    ax.axvline(30_000, color="k", ls="--", lw=1, label="goal: 30k impressions/s")
    ax.set_xlabel("training impressions / s")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.set_title("MOBIUS training throughput (same run, same log)", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


if __name__ == "__main__":
    main()
