"""Sequence model zoo on MovieLens 100K: YouTubeDNN, MIND, ComiRec-SA/-DR, SDM, PDN, Octopus, SINE,
AttRec, SASRec against DSSM.

BENCHMARK.md §1 protocol (leave-one-out, full ranking, training (+ validation) items removed,
pessimistic ties): HR@10/50, NDCG@10/50 on test, plus diversity = mean number of distinct genres
among each user's top 50, parameters and training examples/s. ComiRec's controllable aggregation
is measured on top: the merged top-200 candidates of ComiRec-SA re-selected to 50 with
lambda in {0, 0.005, 0.02} (HR@50 and diversity of the selected 50).

Every model gets the same sizes (embedding 32, hidden [128], output 32), batch, learning rate and
training budget (``--steps`` batches; the CPU budget here is < 15 minutes on 2 cores), and no
per-model tuning. PDN is evaluated through the generic multi-vector path (best single path per
item); its item-to-item serving (``models.pdn.path_retrieve``) sums the paths.

Usage: .venv/bin/python bench/zoo_sequence.py [--steps 40] [--only mind,sdm]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_ML = HERE.parent.parent / "shared" / "data" / "ml-100k"
COMMON_MODEL = {"embedding_dim": 32, "hidden": [128], "output_dim": 32, "temperature": 0.05}

SDM_FEATURES = [
    {"name": "user_id", "side": "query"},
    {"name": "session", "side": "query", "kind": "sequence", "vocab_from": "item_id", "max_len": 10},
    {"name": "long_history", "side": "query", "kind": "sequence", "vocab_from": "item_id", "max_len": 50},
    {"name": "gender", "side": "query"}, {"name": "age", "side": "query"},
    {"name": "occupation", "side": "query"},
    {"name": "item_id", "side": "item"},
    {"name": "genres", "side": "item", "kind": "sequence", "max_len": 6},
]

#: name -> (model section, features override or None)
MODELS: dict[str, tuple[dict, list | None]] = {
    "dssm": ({"name": "dssm"}, None),
    "youtubednn": ({"name": "youtubednn"}, None),
    "mind": ({"name": "mind", "num_interests": 4}, None),
    "comirec_sa": ({"name": "comirec_sa", "num_interests": 4}, None),
    "comirec_dr": ({"name": "comirec_dr", "num_interests": 4}, None),
    "sdm": ({"name": "sdm", "history": "session", "long_history": "long_history"}, SDM_FEATURES),
    "pdn": ({"name": "pdn"}, None),
    "octopus": ({"name": "octopus", "num_interests": 8}, None),
    "sine": ({"name": "sine", "num_interests": 4, "concepts": 64}, None),
    "attrec": ({"name": "attrec"}, None),
    "sasrec": ({"name": "sasrec", "blocks": 2, "heads": 2}, None),
}
LAMBDAS = [0.0, 0.005, 0.02]


def genre_matrix(items_path: Path, corpus_ids: np.ndarray) -> np.ndarray:
    """[N, G] multi-hot genres of the corpus items."""
    import pyarrow.parquet as pq

    t = pq.read_table(items_path, columns=["item_id", "genres"]).to_pylist()
    by_id = {r["item_id"]: (r["genres"] or "").split() for r in t}
    names = sorted({g for gs in by_id.values() for g in gs})
    col = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(corpus_ids), len(names)), dtype=bool)
    for r, i in enumerate(corpus_ids.tolist()):
        for g in by_id.get(i, []):
            out[r, col[g]] = True
    return out


def diversity(top: np.ndarray, genres: np.ndarray) -> float:
    """Mean number of distinct genres among each row's items ([R, K] corpus positions)."""
    ok = top >= 0
    hot = genres[np.where(ok, top, 0)] & ok[..., None]  # [R, K, G]
    return float(hot.any(1).sum(1).mean())


def evaluate(run_dir: Path, items_path: Path, ks=(10, 50), split: str = "test") -> dict:
    import torch

    from twotower.eval.metrics import ranking_metrics  # noqa: F401  (same metric code as training)
    from twotower.eval.offline import encode_corpus, encode_queries, rank_targets
    from twotower.features.feature_set import FeatureSet
    from twotower.models.comirec import controllable_aggregate
    from twotower.pipeline import RunData, load_model, load_run_config
    from twotower.run import RunDir

    run = RunDir(run_dir)
    cfg = load_run_config(run)
    data = RunData(cfg, FeatureSet.load(run.features))
    model = load_model(run)
    corpus = data.corpus()
    req = data.requests(split, corpus)
    items = encode_corpus(model, corpus)
    q = encode_queries(model, req.query)
    ranks, _, top = rank_targets(q, items, req.targets, req.exclude, top_k=200)
    out = {}
    for k in ks:
        out[f"hr@{k}"] = float((ranks < k).mean())
        out[f"ndcg@{k}"] = float(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    genres = genre_matrix(items_path, np.asarray(corpus.ids))
    out["diversity@50"] = diversity(top[:, :50], genres)
    if q.shape[1] > 1 and cfg.model.name.startswith("comirec"):
        t_indptr, t_pos = req.targets
        target = t_pos[t_indptr[:-1]]  # leave-one-out: one target per user
        with torch.no_grad():
            cand = torch.from_numpy(top)
            scores = torch.einsum("rvd,rcd->rvc", q, items[cand]).amax(1).numpy()  # f(u, i)
        agg = {}
        for lam in LAMBDAS:
            pick = controllable_aggregate(scores, genres[top], 50, lam)
            chosen = np.take_along_axis(top, np.maximum(pick, 0), 1)
            agg[str(lam)] = {"hr@50": float((chosen == target[:, None]).any(1).mean()),
                             "diversity@50": diversity(chosen, genres)}
        out["controllable"] = agg
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_ML))
    ap.add_argument("--steps", type=int, default=40, help="training batches per model")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--only", default="", help="comma-separated models (dssm, youtubednn always run)")
    ap.add_argument("--workdir", default="/tmp/twotower_bench_zoo_sequence")
    ap.add_argument("--out", default=str(HERE / "results" / "zoo_sequence.json"))
    args = ap.parse_args()

    import torch

    from twotower.config import validate_config
    from twotower.data.movielens import prepare_movielens
    from twotower.pipeline import train_run
    from twotower.presets import movielens_config

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    work = Path(args.workdir)
    ml = work / "ml_data"
    paths = prepare_movielens(args.data, ml)
    names = list(MODELS) if not args.only else ["dssm", "youtubednn"] + [
        n for n in args.only.split(",") if n not in ("dssm", "youtubednn")]
    res: dict = {"steps": args.steps, "batch_size": args.batch, "common_model": COMMON_MODEL,
                 "models": {}}
    for name in names:
        model, feats = MODELS[name]
        cfg = movielens_config(ml, work / "runs" / name, history_len=50,
                               model={**COMMON_MODEL, **model}, objective={"in_batch_block": None},
                               train={"epochs": 100, "max_steps": args.steps, "batch_size": args.batch,
                                      "progress": False, "threads": 2, "checkpoint_every": 1_000_000,
                                      "early_stopping_patience": None})
        if feats is not None:
            raw = cfg.model_dump(mode="json")
            raw["data"]["features"] = feats
            cfg = validate_config(raw, "zoo_sequence config")
        s = train_run(cfg, overwrite=True, quiet=True)
        r = evaluate(s.run_dir, paths["items"])
        valid = evaluate(s.run_dir, paths["items"], split="valid")
        r["valid_hr@10"], r["valid_hr@50"] = valid["hr@10"], valid["hr@50"]
        from twotower.pipeline import load_model
        from twotower.run import RunDir

        r["params"] = sum(p.numel() for p in load_model(RunDir(s.run_dir)).parameters())
        r["examples_per_s"] = s.report["train"]["examples_per_second"]
        r["train_seconds"] = s.report["train"]["seconds"]
        r["pipeline_hr@50"] = s.metrics.get("hr@50")  # the pipeline's own metric (cross-check)
        res["models"][name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)
    res["seconds"] = time.perf_counter() - t0
    base = res["models"]["dssm"]["examples_per_s"]
    for r in res["models"].values():
        r["slowdown_vs_dssm"] = base / r["examples_per_s"]  # DSSM's examples/s over the model's
    cols = ["valid_hr@50", "hr@10", "hr@50", "ndcg@10", "ndcg@50", "diversity@50", "params",
            "examples_per_s", "slowdown_vs_dssm"]
    lines = ["| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for n, r in res["models"].items():
        cells = [f"{r[c]:.0f}" if c in ("params", "examples_per_s") else
                 f"{r[c]:.1f}x" if c == "slowdown_vs_dssm" else f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for n, r in res["models"].items():
        for lam, a in r.get("controllable", {}).items():
            lines.append(f"| {n} + aggregation λ={lam} | - | - | {a['hr@50']:.3f} | - | - | "
                         f"{a['diversity@50']:.3f} | - | - | - |")
    res["table"] = "\n".join(lines)
    print(res["table"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    from plots import plot_results

    plot_results("zoo_sequence", res, out)


def plot(res: dict, path: Path) -> None:
    """HR@50 against training examples/s (log scale), one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, r in res["models"].items():
        ax.scatter(r["examples_per_s"], r["hr@50"])
        ax.annotate(n, (r["examples_per_s"], r["hr@50"]), fontsize=8)
    base = res["models"]["dssm"]["examples_per_s"]
    ax.axvline(base / 5, ls="--", c="grey", lw=0.8, label="DSSM / 5")
    ax.set_xscale("log")
    ax.set_xlabel("training examples/s")
    ax.set_ylabel("test HR@50")
    ax.set_title(f"MovieLens 100K, {res['steps']} batches of {res['batch_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
