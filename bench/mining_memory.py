"""EBR offline mining at catalogue scale (issue 15): time and peak memory of
``objectives.hard_negatives.mine_hard_negatives`` from 100k to 1M items and 10k to 100k queries.

A naive miner holds the [queries, items] score matrix (100k x 1M float32 = 400 GB; the
sentence-transformers report #3164 hit 40 GB at 100k x 100k); the chunked miner holds
``query_chunk x (item_chunk + window)`` scores at a time. Each size runs in its own process so its
peak RSS (ru_maxrss) is its own; the table gives the peak above the process's baseline (torch
imported, the vectors allocated), against the naive matrix's size, and the time against the same
run's cost of one plain matmul pass over the same vectors (the floor: mining must score every
pair once; timed on 10k queries and scaled linearly).

Vectors are random unit vectors (D = 32), window ranks 101-500, 2 draws, 5 positives per query.
Usage: python bench/mining_memory.py [--sizes 100000x10000,1000000x100000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_SIZES = "100000x10000,1000000x10000,1000000x100000"


def one(items: int, queries: int, dim: int, threads: int) -> dict:
    """Mine once in this process; returns time, peak memory and the matmul floor."""
    import torch

    from twotower.objectives.hard_negatives import mine_hard_negatives

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    item_vecs = torch.nn.functional.normalize(torch.randn(items, dim, generator=gen), dim=1)
    query_vecs = torch.nn.functional.normalize(torch.randn(queries, dim, generator=gen), dim=1)
    positives = torch.randint(0, items, (queries, 5), generator=gen)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    rows, valid = mine_hard_negatives(query_vecs, item_vecs, positives, window=(101, 500), draws=2,
                                      margin=0.05, generator=gen)
    mine_s = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the floor: every (query, item) pair scored once, in the same chunks, nothing kept
    # (timed on at most 10k queries and scaled: the pass is linear in the queries)
    sample = min(queries, 10_000)
    t = time.perf_counter()
    for start in range(0, sample, 1024):
        q = query_vecs[start:min(start + 1024, sample)]
        for s in range(0, items, 65536):
            (q @ item_vecs[s:s + 65536].T).max()
    floor_s = (time.perf_counter() - t) * queries / sample
    in_window = bool(valid.any())
    return {"items": items, "queries": queries, "dim": dim, "mine_s": mine_s, "matmul_floor_s": floor_s,
            "peak_above_baseline_mb": (peak_kb - base_kb) / 1024, "process_peak_mb": peak_kb / 1024,
            "naive_matrix_gb": items * queries * 4 / 1e9, "valid_share": float(valid.float().mean()),
            "mined_any": in_window, "queries_per_s": queries / mine_s}


def table(rows: list[dict]) -> str:
    lines = ["| items | queries | mining s | x matmul floor | peak above baseline | naive [Q, N] matrix |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['items']:,} | {r['queries']:,} | {r['mine_s']:.1f} | "
                     f"{r['mine_s'] / r['matmul_floor_s']:.1f}x | {r['peak_above_baseline_mb']:,.0f} MB | "
                     f"{r['naive_matrix_gb']:,.0f} GB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="ITEMSxQUERIES,...")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    ap.add_argument("--out", default=str(HERE / "results" / "mining_memory.json"))
    args = ap.parse_args()
    if args.one:
        n, r = (int(x) for x in args.one.split("x"))
        print(json.dumps(one(n, r, args.dim, args.threads)))
        return
    from twotower.run import atomic_write_text

    rows = []
    for size in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", size, "--dim", str(args.dim),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['items']:>9,} items x {r['queries']:>7,} queries: {r['mine_s']:7.1f} s "
              f"({r['mine_s'] / r['matmul_floor_s']:.1f}x the matmul floor), peak +{r['peak_above_baseline_mb']:,.0f} MB "
              f"(naive matrix {r['naive_matrix_gb']:,.0f} GB)", flush=True)
        res = {"rows": rows, "window": [101, 500], "draws": 2, "dim": args.dim, "threads": args.threads,
               "table": table(rows)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(res, indent=2))  # after every size
    print(res["table"])
    from plots import plot_results

    plot_results("mining_memory", res, args.out)


if __name__ == "__main__":
    main()
