"""BENCHMARK.md §1 — MovieLens 100K, leave-one-out, full ranking: popularity, implicit ALS / BPR
and twotower's DSSM in one table (HR@10/50, NDCG@10/50, training positives/s, peak memory).

Each method runs in its own child process so its peak memory (ru_maxrss) is its own.
Usage: python bench/ml100k.py [--data ../shared/data/ml-100k] [--only twotower-dssm] [--epochs 20]
       [--preset fast|full] [--model '{"hidden": [128]}']
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ml-100k"
KS = [10, 50]


def protocol(data_dir: Path):
    """Train CSR, test targets and exclusions of BENCHMARK.md §1 from prepare_movielens output."""
    import pyarrow.parquet as pq

    t = pq.read_table(data_dir / "interactions.parquet", columns=["user_id", "item_id", "split"])
    users = t["user_id"].to_numpy()
    items = t["item_id"].to_numpy()
    split = np.asarray(t["split"].to_pylist())
    uid, u = np.unique(users, return_inverse=True)
    iid, i = np.unique(items, return_inverse=True)
    train = split == "train"
    return uid, iid, u, i, split, train


def rank_eval(user_vecs: np.ndarray, item_vecs: np.ndarray, data_dir: Path) -> dict:
    import torch

    from twotower.eval.metrics import ranking_metrics
    from twotower.eval.offline import rank_targets
    from twotower.features.requests import _csr

    uid, iid, u, i, split, train = protocol(data_dir)
    n_users = len(uid)
    test = split == "test"
    seen = train | (split == "valid")
    targets = _csr(u[test], i[test], n_users)
    exclude = _csr(u[seen], i[seen], n_users)
    has = np.diff(targets[0]) > 0
    ranks, req, topk = rank_targets(torch.from_numpy(user_vecs).float(), torch.from_numpy(item_vecs).float(),
                                    targets, exclude, max(KS))
    return ranking_metrics(ranks, req, n_users, KS, topk, len(iid)) | {"users_with_test": int(has.sum())}


def run_popularity(data_dir: Path, args) -> dict:
    uid, iid, u, i, split, train = protocol(data_dir)
    t0 = time.perf_counter()
    counts = np.bincount(i[train], minlength=len(iid)).astype(np.float64)
    seconds = time.perf_counter() - t0
    m = rank_eval(np.ones((len(uid), 1)), counts[:, None], data_dir)
    return m | {"positives_per_s": float(train.sum() / max(seconds, 1e-9))}


def _implicit(data_dir: Path, kind: str, args) -> dict:
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    uid, iid, u, i, split, train = protocol(data_dir)
    mat = sp.csr_matrix((np.ones(train.sum(), dtype=np.float32), (u[train], i[train])),
                        shape=(len(uid), len(iid)))
    if kind == "als":
        model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15,
                                        alpha=2.0, random_state=0)
    else:
        model = BayesianPersonalizedRanking(factors=64, learning_rate=0.05, regularization=0.01,
                                            iterations=100, random_state=0)
    t0 = time.perf_counter()
    model.fit(mat, show_progress=False)
    seconds = time.perf_counter() - t0
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    epochs = 15 if kind == "als" else 100
    return rank_eval(uf, itf, data_dir) | {"positives_per_s": float(train.sum() * epochs / seconds)}


def run_als(data_dir, args):
    return _implicit(data_dir, "als", args)


def run_bpr(data_dir, args):
    return _implicit(data_dir, "bpr", args)


def run_dssm(data_dir: Path, args, train_overrides: dict | None = None,
             objective: dict | None = None) -> dict:
    from twotower.presets import movielens_config
    from twotower.pipeline import train_run

    train = {"epochs": args.epochs, "progress": False, "seed": 0, "device": args.device}
    if args.batch_size:  # else the preset's (fast: 4096 in blocks of 1024)
        train["batch_size"] = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        cfg = movielens_config(data_dir, Path(tmp) / "run", args.preset,
                               model=json.loads(args.model), train={**train, **(train_overrides or {})},
                               objective=objective or {})
        s = train_run(cfg, overwrite=True)
    m = {k: v for k, v in s.metrics.items() if k != "split"}
    return m | {"positives_per_s": s.train.examples_per_second, "epochs_run": s.train.epochs_run,
                "best_epoch": s.train.best_epoch, "preset": args.preset,
                "model": cfg.model.model_dump(mode="json"), "batch_size": cfg.train.batch_size,
                "lr": cfg.train.lr, "in_batch_block": cfg.objective.in_batch_block}


def run_dssm_batch1024(data_dir: Path, args) -> dict:
    """The same DSSM trained on plain batches of 1024 (one softmax over the whole batch): the
    baseline of the preset's blocked 4096-row batches, measured in the same run."""
    return run_dssm(data_dir, args, {"batch_size": 1024, "lr": 0.003}, {"in_batch_block": None})


METHODS = {"popularity": run_popularity, "implicit-als": run_als, "implicit-bpr": run_bpr,
           "twotower-dssm": run_dssm, "dssm-batch1024": run_dssm_batch1024}


def child(name: str, data_dir: Path, args) -> None:
    t0 = time.perf_counter()
    out = METHODS[name](data_dir, args)
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def child_env() -> dict:
    """The children's environment: idle OpenMP threads sleep instead of spinning, unless the caller
    chose otherwise. On a machine shared with other jobs, spinning threads that wait for a
    descheduled peer at every parallel region cut twotower's 2-thread training speed 5-10x
    (measured: ~4 k vs ~40 k positives/s); on an idle machine the setting changes little."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--only", nargs="*", default=list(METHODS))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="twotower-dssm batch size (default: the preset's)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (twotower-dssm only)")
    ap.add_argument("--preset", default="fast", choices=["fast", "full"],
                    help="twotower-dssm model size (twotower.presets.MOVIELENS_MODELS)")
    ap.add_argument("--model", default="{}",
                    help='JSON overrides of the twotower-dssm model, e.g. \'{"hidden": [128]}\'')
    ap.add_argument("--child", default=None)
    ap.add_argument("--prepared", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ml100k.json")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.prepared, args)
        return
    from twotower.data.movielens import prepare_movielens

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp)
        prepare_movielens(args.data, prepared)
        results = {}
        for name in args.only:
            cmd = [sys.executable, __file__, "--child", name, "--prepared", str(prepared),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--device", args.device, "--preset", args.preset, "--model", args.model]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                results[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
                continue
            results[name] = json.loads(line[0][7:])
    cols = ["hr@10", "hr@50", "ndcg@10", "ndcg@50", "positives_per_s", "peak_rss_mb"]
    print(f"\nMovieLens 100K, leave-one-out, full ranking ({os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={child_env()['OMP_WAIT_POLICY']}, twotower-dssm preset {args.preset})")
    print(f"{'method':<16}" + "".join(f"{c:>17}" for c in cols))
    for name, r in results.items():
        cells = "".join(f"{r.get(c, float('nan')):>17.4f}" if c.startswith(("hr", "ndcg"))
                        else f"{r.get(c, float('nan')):>17.0f}" for c in cols)
        print(f"{name:<16}{cells}")
    if "twotower-dssm" in results and "implicit-bpr" in results:
        d, b = results["twotower-dssm"], results["implicit-bpr"]
        if "hr@50" in d and "hr@50" in b:
            print(f"\nDSSM / BPR: HR@50 {d['hr@50'] / b['hr@50']:.2f}x")
    if "twotower-dssm" in results and "dssm-batch1024" in results:
        d, b = results["twotower-dssm"], results["dssm-batch1024"]
        if "positives_per_s" in d and "positives_per_s" in b:
            print(f"preset (4096 rows, softmax blocks of 1024) / plain batch 1024: positives/s "
                  f"{d['positives_per_s'] / b['positives_per_s']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from twotower.run import atomic_write_text

    res = {"protocol": "BENCHMARK.md §1", "epochs": args.epochs,
           "batch_size": args.batch_size or None, "preset": args.preset,
           "omp_wait_policy": child_env()["OMP_WAIT_POLICY"],
           "model_overrides": json.loads(args.model), "results": results}
    atomic_write_text(args.out, json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    from plots import plot_results

    plot_results("ml100k", res, args.out)


if __name__ == "__main__":
    main()
