"""The batched scoring kernels of the sequence models against their plain forms, in one run.

MIND / ComiRec / Octopus's label-aware scores (hard and soft) and PDN's log-sum-exp over trigger
paths, forward + backward at the MovieLens zoo's shapes (B = N = 1024 in-batch candidates, K
interests, L = 50 triggers, D = 32 / 33), one torch thread, median of ``--repeats``. Each fast
kernel has an equivalence test (tests/models/test_zoo_sequence.py).

Usage: .venv/bin/python bench/sequence_kernels.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(fn, make, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        args = make()
        t = time.perf_counter()
        fn(*args).sum().backward()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "sequence_kernels.json"))
    args = ap.parse_args()

    import torch

    from twotower.towers.paths import path_logsumexp, path_logsumexp_reference
    from twotower.towers.sequence import label_aware_logits, label_aware_logits_reference

    torch.set_num_threads(1)
    torch.manual_seed(0)
    b, n, d = 1024, 1024, 32

    def interests(k):
        def make():
            valid = torch.rand(b, k) > 0.3
            return (torch.randn(b, k, d, requires_grad=True), torch.randn(n, d, requires_grad=True), valid)
        return make

    def paths():
        return torch.randn(b, 50, d + 1, requires_grad=True), torch.randn(n, d + 1, requires_grad=True)

    cases = {
        "label-aware hard, K=4 (ComiRec)": (lambda q, i, v: label_aware_logits_reference(q, i, 0.0, True, v),
                                            lambda q, i, v: label_aware_logits(q, i, 0.0, True, v), interests(4)),
        "label-aware hard, K=8 (Octopus)": (lambda q, i, v: label_aware_logits_reference(q, i, 0.0, True, v),
                                            lambda q, i, v: label_aware_logits(q, i, 0.0, True, v), interests(8)),
        "label-aware soft p=2, K=4 (MIND)": (lambda q, i, v: label_aware_logits_reference(q, i, 2.0, False, v),
                                             lambda q, i, v: label_aware_logits(q, i, 2.0, False, v), interests(4)),
        "PDN paths, L=50": (path_logsumexp_reference, path_logsumexp, paths),
    }
    res = {"shapes": {"B": b, "N": n, "D": d}, "threads": 1, "repeats": args.repeats, "cases": {}}
    lines = ["| kernel (fwd + bwd) | plain ms | batched ms | speed-up |", "|---|---|---|---|"]
    for name, (plain, fast, make) in cases.items():
        tp, tf = timed(plain, make, args.repeats), timed(fast, make, args.repeats)
        res["cases"][name] = {"plain_s": tp, "batched_s": tf, "speedup": tp / tf}
        lines.append(f"| {name} | {tp * 1e3:.0f} | {tf * 1e3:.0f} | {tp / tf:.1f}x |")
        print(lines[-1], flush=True)
    res["table"] = "\n".join(lines)
    print(res["table"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(res["cases"])
    ax.barh(names, [res["cases"][k]["speedup"] for k in names])
    ax.axvline(1.0, c="grey", lw=0.8)
    ax.set_xlabel("speed-up of the batched kernel over the plain form (fwd + bwd)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
