"""Time the README walk "Your own log in ten minutes" step by step, from a fresh clone.

    python bench/walk.py [--impressions 20000] [--epochs 3]

Clones this checkout into a scratch folder (``git clone``: committed files only, as a new user
gets them), then runs the walk's commands there with this interpreter's installed dependencies:
simulate, init, train, index, evaluate, serve until ``/health`` answers, one query. Prints a table
(wall and CPU seconds per step, the machine's load average) and writes
``bench/results/walk.json`` and ``walk.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tt-walk-"))
    clone = work / "twotower"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    tt = [sys.executable, "-m", "twotower"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = [
        ("simulate", ["simulate", "data/sim", "--impressions", str(args.impressions)]),
        ("init", ["init", "data/sim/impressions.parquet", "-o", "my.yaml"]),
        ("train", ["train", "my.yaml", "--set", f"train.epochs={args.epochs}"]),
        ("index", ["index", "runs/impressions"]),
        ("evaluate", ["evaluate", "runs/impressions"]),
    ]
    rows = []
    t_walk = time.perf_counter()
    for name, argv in steps:
        t0, c0 = time.perf_counter(), children_cpu()
        res = subprocess.run(tt + argv, cwd=clone, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{name} failed:\n{res.stdout}\n{res.stderr}")
        rows.append({"step": name, "command": "twotower " + " ".join(argv),
                     "wall_s": time.perf_counter() - t0, "cpu_s": children_cpu() - c0})
        if name == "index":
            recall = json.loads(res.stdout[:res.stdout.rindex("}") + 1])["recall"]
    t0 = time.perf_counter()
    server = subprocess.Popen(tt + ["serve", "runs/impressions", "--port", str(port)], cwd=clone,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.perf_counter() - t0 > 300 or server.poll() is not None:
                    sys.exit("the service did not start")
                time.sleep(0.5)
        rows.append({"step": "serve", "command": "twotower serve runs/impressions (until /health)",
                     "wall_s": time.perf_counter() - t0, "cpu_s": None})
        t0 = time.perf_counter()
        body = json.dumps({"queries": [{"user_id": 7, "query_text": "cheap flights"}], "k": 5}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/retrieve", body,
                                     {"content-type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        rows.append({"step": "query", "command": "POST /retrieve (k=5)",
                     "wall_s": time.perf_counter() - t0, "cpu_s": None})
    finally:
        server.terminate()
        server.wait(30)
    total = time.perf_counter() - t_walk
    metrics = json.loads((clone / "runs" / "impressions" / "metrics.json").read_text())
    out = {"impressions": args.impressions, "epochs": args.epochs, "steps": rows,
           "total_wall_s": total, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
           "index_recall": recall, "test_metrics": {k: metrics.get(k) for k in ("split", "hr@10", "hr@50")},
           "answer_ids": answer["results"][0]["ids"]}
    print(f"{'step':<9} {'wall s':>7} {'cpu s':>7}  command")
    for r in rows:
        cpu = f"{r['cpu_s']:7.1f}" if r["cpu_s"] is not None else "      -"
        print(f"{r['step']:<9} {r['wall_s']:7.1f} {cpu}  {r['command']}")
    print(f"{'walk':<9} {total:7.1f}          load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "walk.json").write_text(json.dumps(out, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh([r["step"] for r in rows][::-1], [r["wall_s"] for r in rows][::-1], color="#4c72b0")
    ax.set_xlabel("wall seconds")
    ax.set_title(f"README walk: {total:.0f} s in all ({args.impressions:,} impressions, "
                 f"load {os.getloadavg()[0]:.0f} on {os.cpu_count()} cpus)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "walk.png", dpi=120)


if __name__ == "__main__":
    main()
