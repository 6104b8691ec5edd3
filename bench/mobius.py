"""MOBIUS on the sponsored-search simulator (BENCHMARK.md section 2) and the shape of the paper's
Table 1. Prints the tables and writes bench/results/mobius.json.

    .venv/bin/python bench/mobius.py [--impressions 200000] [--epochs N] [--oracle]

Every contender trains with one torch thread (``run_comparison(threads=1)``): on this shared
2-core machine a second intra-op thread made training 10-30x slower (OpenMP spin-waits).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from twotower.data.simulator import SimulatorConfig, simulate
from twotower.comparison import format_tables, run_comparison
from twotower.run import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser()
    # 200k impressions: 4x the log of earlier runs (relevant@10 of MOBIUS 0.433 vs 0.373 at 50k)
    ap.add_argument("--impressions", type=int, default=200_000)
    ap.add_argument("--ads", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=None, help="default: the MOBIUS preset's")
    ap.add_argument("--searches", type=int, default=400)
    ap.add_argument("--oracle", action="store_true", help="also train with the simulator oracle")
    ap.add_argument("--workdir", default="/tmp/twotower_bench_mobius")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mobius.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim = SimulatorConfig(n_impressions=args.impressions, n_ads=args.ads, n_queries=args.queries,
                          n_users=args.users)
    data = Path(args.workdir) / "data"
    simulate(sim, data)
    res = run_comparison(data, Path(args.workdir) / "runs", epochs=args.epochs,
                         oracle=args.oracle, max_searches=args.searches)
    res["simulator"] = sim.model_dump()
    res["seconds"] = time.perf_counter() - t0
    print(format_tables(res))
    r = res["retrieval"]
    ctr, mob = r["CTR two-tower (click/unclick)"], r["MOBIUS (lexical teacher)"]
    rel, brw = r["relevance only (lexical teacher)"], r["MOBIUS + BRW (bid)"]
    checks = {}
    for k in res["ks"]:
        checks[f"bad_rate_halved@{k}"] = (1 - mob[f"relevant@{k}"]) <= 0.5 * (1 - ctr[f"relevant@{k}"])
        checks[f"mobius_beats_ctr_cpm@{k}"] = mob[f"cpm@{k}"] > ctr[f"cpm@{k}"]
        checks[f"brw_beats_relevance_cpm@{k}"] = brw[f"cpm@{k}"] > rel[f"cpm@{k}"]
    res["checks"] = checks
    print("checks:", json.dumps(checks))
    print(f"total {res['seconds']:.1f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=2, default=str))
    from plots import plot_results

    plot_results("mobius", res, out)


if __name__ == "__main__":
    main()
