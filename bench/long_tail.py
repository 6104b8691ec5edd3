"""MISSION §F on MovieLens 100K (BENCHMARK.md §1): the base DSSM against SSL feature masking
(Yao et al., CIKM 2021), EBR hard negatives mined offline / online (Huang et al., KDD 2020) and
their ensemble / cascade embeddings, with head and tail items reported apart (tail = the bottom
80% of items by training frequency: SSL's claim is on the tail).

Every variant is the same DSSM (the `fast` preset's towers, plain batches of 1024) trained in this
process one after another, early-stopped on validation HR@50; the table is test.
Usage: python bench/long_tail.py [--epochs 12] [--only dssm ssl-cfm ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ml-100k"
KS = [10, 50]
BASE = {"train": {"batch_size": 1024, "lr": 0.003}, "objective": {"in_batch_block": None}}
HN = {"window": [101, 500], "warmup_epochs": 2, "refresh_every": 2}
VARIANTS = {
    "dssm": {},
    "ssl-rfm": {"objective": {"ssl": {"masking": "rfm"}}},
    "ssl-crfm": {"objective": {"ssl": {"masking": "crfm"}}},
    "ssl-cfm": {"objective": {"ssl": {"masking": "cfm"}}},
    "ebr-offline": {"objective": {"name": "hard_negatives", "hard_negatives": {**HN, "draws": 2}}},
    "ebr-online": {"objective": {"name": "hard_negatives",
                                 "hard_negatives": {**HN, "draws": 0, "online": 8, "easy_negatives": 256}}},
}


def vectors(run_dir: Path):
    """Test-request query vectors, corpus item vectors and the requests of a trained run."""
    from twotower.eval.offline import encode_corpus, encode_queries
    from twotower.runs import load_run

    run = load_run(run_dir)
    corpus = run.corpus()
    req = run.requests("test")
    q = encode_queries(run.model, req.query)[:, 0]
    items = encode_corpus(run.model, corpus)
    return q, items, req, run, corpus


def tail_items(run, corpus) -> np.ndarray:
    from twotower.eval.metrics import head_tail_items

    log = run.data.train_source(True)
    code_to_row = np.full(int(max(corpus.index.max(), log.item_index.max())) + 1, -1)
    code_to_row[corpus.index] = np.arange(len(corpus))
    rows = code_to_row[log.item_index]
    return head_tail_items(np.bincount(rows[rows >= 0], minlength=len(corpus)))


def score(q: torch.Tensor, items: torch.Tensor, req, is_tail: np.ndarray) -> dict:
    from twotower.eval.metrics import head_tail_metrics, ranking_metrics
    from twotower.eval.offline import rank_targets

    ranks, r, topk = rank_targets(q.float(), items.float(), req.targets, req.exclude, max(KS))
    out = ranking_metrics(ranks, r, len(req), KS, topk, len(items))
    out.update(head_tail_metrics(ranks, r, req.targets[1], is_tail, KS))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "long_tail.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from twotower.config import merge
    from twotower.data.movielens import prepare_movielens
    from twotower.index.cascade import cascade_rescore, ensemble_vectors
    from twotower.pipeline import train_run
    from twotower.presets import movielens_config

    results: dict[str, dict] = {}
    kept: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "ml"
        prepare_movielens(args.data, prepared)
        for name in args.only:
            sections = merge(merge(BASE, {"train": {"epochs": args.epochs, "progress": False, "seed": 0}}),
                             VARIANTS[name])
            cfg = movielens_config(prepared, Path(tmp) / name, "fast", **sections)
            t0 = time.perf_counter()
            s = train_run(cfg, overwrite=True)
            q, items, req, run, corpus = vectors(s.run_dir)
            is_tail = tail_items(run, corpus)
            results[name] = score(q, items, req, is_tail) | {
                "positives_per_s": s.train.examples_per_second, "best_epoch": s.train.best_epoch,
                "valid_best": s.train.best_metric, "seconds": time.perf_counter() - t0}
            kept[name] = (q, items, req, is_tail)
            print(name, {k: round(v, 4) for k, v in results[name].items() if isinstance(v, float)}, flush=True)
        strong = "ebr-offline" if "ebr-offline" in kept else None
        if "dssm" in kept and strong:
            (qa, ia, req, is_tail), (qb, ib, _, _) = kept["dssm"], kept[strong]
            qe = torch.from_numpy(ensemble_vectors(qa.numpy(), qb.numpy(), 0.5))
            ie = torch.from_numpy(ensemble_vectors(ia.numpy(), ib.numpy(), 0.5))
            results[f"ensemble dssm+{strong}"] = score(qe, ie, req, is_tail)
            # cascade: DSSM's top 200 (training items excluded), re-scored by the stronger model
            from twotower.eval.offline import rank_targets

            _, _, top = rank_targets(qa.float(), ia.float(), req.targets, req.exclude, 200)
            rows, _ = cascade_rescore(top, qb.numpy(), ib.numpy(), 200)
            # rank of each target inside the re-scored list (not found: beyond every K)
            t_indptr, t_pos = req.targets
            t_req = np.repeat(np.arange(len(req)), np.diff(t_indptr))
            where = rows[t_req] == t_pos[:, None]
            ranks = np.where(where.any(1), where.argmax(1), 10 ** 6)
            from twotower.eval.metrics import head_tail_metrics, ranking_metrics

            results[f"cascade dssm@200->{strong}"] = (ranking_metrics(ranks, t_req, len(req), KS)
                                                      | head_tail_metrics(ranks, t_req, t_pos, is_tail, KS))
    base = results.get("dssm", {})
    cols = ["hr@10", "hr@50", "head_hr@50", "tail_hr@50", "positives_per_s"]
    print(f"\nMovieLens 100K, test, {args.epochs} epochs max ({os.cpu_count()} CPUs)")
    print(f"{'variant':<34}" + "".join(f"{c:>14}" for c in cols) + f"{'tail x dssm':>14}")
    for name, r in results.items():
        rel = (r.get("tail_hr@50", np.nan) / base["tail_hr@50"]) if base.get("tail_hr@50") else np.nan
        print(f"{name:<34}" + "".join(f"{r.get(c, np.nan):>14.4f}" if c != "positives_per_s"
                                      else f"{r.get(c, np.nan):>14.0f}" for c in cols) + f"{rel:>14.2f}")
    from twotower.run import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"protocol": "BENCHMARK.md §1, head/tail split",
                                            "epochs": args.epochs, "results": results}, indent=2))
    from plots import plot_results

    plot_results("long_tail", json.loads(args.out.read_text()), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
