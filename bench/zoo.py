"""Model zoo benchmark: every zoo model against the DSSM baseline, in one run per suite, one table.

Suites (``--suite interaction|sequence|all``), each with one shared harness (configs, training,
evaluation with the library's metric code, tables, JSON under bench/results/):

* ``interaction`` — feature-interaction towers (SENet, ResNet, Que2Search, DAT, parallel) against
  DSSM (MGDSPR and its relevance control on the simulator only: it needs query text) on MovieLens
  100K (BENCHMARK.md §1: leave-one-out, full ranking with seen items removed,
  HR@10/50 and NDCG@10/50 on test, early stopping on validation) and on the sponsored-search
  simulator (BENCHMARK.md §2: relevant@50 and CPM@50 of held-out searches from the simulator's
  truth, ``twotower.eval.simulator.HeldOut``). Writes bench/results/zoo.json.
* ``sequence`` — behaviour-sequence models (YouTubeDNN, MIND, ComiRec-SA/-DR, SDM, PDN, Octopus,
  SINE, AttRec, SASRec) against
  DSSM on MovieLens 100K under a fixed training budget (``--steps`` batches), plus diversity
  (distinct genres among each user's top 50) and ComiRec's controllable aggregation of its merged
  top-200 (``serve.aggregation``) at lambda in {0, 0.005, 0.02}. PDN is evaluated through the
  generic multi-vector path (best single path per item). Writes bench/results/zoo_sequence.json.

Every model of a suite gets the same embedding size, tower width, learning rate, batch size and
training budget, and no per-model tuning (tuning budget: 0 extra runs each). To add a model, add
an entry to the suite's ``models`` table.

Usage: .venv/bin/python bench/zoo.py --suite interaction [--only dssm,senet] [--ml-epochs 8]
       .venv/bin/python bench/zoo.py --suite sequence [--steps 40] [--only mind,sdm]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_ML = HERE.parent.parent / "shared" / "data" / "ml-100k"

#: shared by every model of every suite (same embedding size / width / output size)
COMMON_MODEL = {"embedding_dim": 32, "hidden": [128], "output_dim": 32}
COMMON_OBJECTIVE = {"temperature": 0.05}


def _two_channel_text(features: list[dict]) -> list[dict]:
    """Que2Search channels: each text feature split into a word channel and a char-3-gram one."""
    out = []
    for f in features:
        if f.get("kind") == "text":
            out.append({**f, "tokens": ["word"]})
            out.append({**f, "name": f["name"] + "_char3", "column": f["name"], "tokens": ["char3"]})
        else:
            out.append(f)
    return out


SDM_FEATURES = [
    {"name": "user_id", "side": "query"},
    {"name": "session", "side": "query", "kind": "sequence", "vocab_from": "item_id", "max_len": 10},
    {"name": "long_history", "side": "query", "kind": "sequence", "vocab_from": "item_id", "max_len": 50},
    {"name": "gender", "side": "query"}, {"name": "age", "side": "query"},
    {"name": "occupation", "side": "query"},
    {"name": "item_id", "side": "item"},
    {"name": "genres", "side": "item", "kind": "sequence", "max_len": 6},
]


@dataclass
class ModelSpec:
    """One benchmarked model: its ``model`` section (merged over COMMON_MODEL), per-dataset
    ``model`` overrides, and optional functions rewriting the feature list per dataset."""

    model: dict
    movielens: dict = field(default_factory=dict)
    simulator: dict = field(default_factory=dict)
    ml_features: object = None  # callable(list[dict]) -> list[dict]
    sim_features: object = None
    note: str = ""
    sim_only: bool = False  # needs query text (MGDSPR): MovieLens has none


SUITES: dict[str, dict[str, ModelSpec]] = {
    "interaction": {
        "dssm": ModelSpec({"name": "dssm"}, note="baseline"),
        "senet": ModelSpec({"name": "senet"}),
        "resnet": ModelSpec({"name": "resnet", "depth": 2}),
        "que2search": ModelSpec({"name": "que2search"}, sim_features=_two_channel_text,
                                note="sim: word + char3 channel per text"),
        "dat": ModelSpec({"name": "dat"}, simulator={"category_field": "ad_category"},
                         note="sim: + category alignment"),
        "parallel": ModelSpec({"name": "parallel"}, note="MLP+DCN+FM+CIN, LR fusion"),
        # MGDSPR and its relevance control (the model's own tau on top of the objective's
        # temperature; mixed hard negatives): relevance@50 vs CPM@50 as tau / noise grow
        "mgdspr": ModelSpec({"name": "mgdspr"}, sim_only=True, note="tau 1"),
        "mgdspr_tau4": ModelSpec({"name": "mgdspr", "relevance_temperature": 4.0}, sim_only=True,
                                 note="relevance control: tau 4"),
        "mgdspr_tau4_noise": ModelSpec({"name": "mgdspr", "relevance_temperature": 4.0,
                                        "hard_negatives": 8}, sim_only=True,
                                       note="relevance control: tau 4 + 8 mixed hard negatives"),
    },
    "sequence": {
        "dssm": ModelSpec({"name": "dssm"}, note="baseline"),
        "youtubednn": ModelSpec({"name": "youtubednn"}),
        "mind": ModelSpec({"name": "mind", "num_interests": 4}),
        "comirec_sa": ModelSpec({"name": "comirec_sa", "num_interests": 4}),
        "comirec_dr": ModelSpec({"name": "comirec_dr", "num_interests": 4}),
        "sdm": ModelSpec({"name": "sdm", "history": "session", "long_history": "long_history"},
                         ml_features=lambda _: SDM_FEATURES),
        "pdn": ModelSpec({"name": "pdn"}),
        "octopus": ModelSpec({"name": "octopus", "num_interests": 8}),
        "sine": ModelSpec({"name": "sine", "num_interests": 4, "concepts": 64}),
        "attrec": ModelSpec({"name": "attrec"}),
        "sasrec": ModelSpec({"name": "sasrec", "blocks": 2, "heads": 2}),
    },
}
#: models that always run in a suite (the baselines)
BASELINES = {"interaction": ["dssm"], "sequence": ["dssm", "youtubednn"]}
OUT = {"interaction": HERE / "results" / "zoo.json", "sequence": HERE / "results" / "zoo_sequence.json"}
LAMBDAS = [0.0, 0.005, 0.02]


# ---------------------------------------------------------------- shared harness
def make_config(kind: str, data_dir: Path, run_dir: Path, spec: ModelSpec, train: dict,
                history_len: int | None = None):
    """The preset of ``kind`` ('movielens' / 'simulator') with the suite's common sizes."""
    from twotower.config import merge, validate_config
    from twotower.presets import movielens_config, simulator_config

    extra = spec.movielens if kind == "movielens" else spec.simulator
    model = merge(merge(dict(COMMON_MODEL), spec.model), extra)
    objective = dict(COMMON_OBJECTIVE)
    if kind == "movielens":
        # plain batches and 50 history items for every model (the fast preset trains 4096-row
        # batches in softmax blocks)
        objective["in_batch_block"] = None
        cfg = movielens_config(data_dir, run_dir, history_len=history_len, model=model,
                               objective=objective, train=train)
    else:
        cfg = simulator_config(data_dir, run_dir, model=model, objective=objective, train=train)
    rewrite = spec.ml_features if kind == "movielens" else spec.sim_features
    if rewrite is not None:
        raw = cfg.model_dump(mode="json")
        raw["data"]["features"] = rewrite([{k: v for k, v in f.items() if v is not None}
                                           for f in raw["data"]["features"]])
        cfg = validate_config(raw, f"zoo {kind} config")
    return cfg


def train(cfg) -> tuple:
    """(summary, trained run) of one model."""
    from twotower.pipeline import train_run
    from twotower.runs import load_run

    s = train_run(cfg, overwrite=True)
    return s, load_run(s.run_dir)


def speed(s, run) -> dict:
    return {"params": sum(p.numel() for p in run.model.parameters()),
            "examples_per_s": s.report["train"]["examples_per_second"],
            "seconds": s.report["train"]["seconds"]}


def prepared_movielens(args, work: Path) -> tuple[Path, dict]:
    """(folder, paths) of the prepared MovieLens tables."""
    from twotower.data.movielens import prepare_movielens

    return work / "ml_data", prepare_movielens(args.data, work / "ml_data")


def format_table(rows: dict[str, dict], cols: list[tuple[str, str]]) -> str:
    """Markdown table: one row per model, ``cols`` = (header, key) into each row's flat dict."""
    lines = ["| model | " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in rows.items():
        cells = []
        for _, key in cols:
            v = r.get(key)
            if v is None:
                cells.append("-")
            elif key.endswith("params"):
                cells.append(f"{v / 1e3:.0f}k")
            elif key.endswith("examples_per_s"):
                cells.append(f"{v:,.0f}")
            elif key.startswith("slowdown"):
                cells.append(f"{v:.1f}x")
            elif key.endswith("cpm@50"):
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(res: dict, out: Path, plot: str) -> None:
    """The suite's JSON, and its PNG beside it (``bench/plots.py``, plotter ``plot``)."""
    from twotower.run import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=2))
    print(res["table"])
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    from plots import plot_results

    if plot == "zoo_sequence":
        plot_hr_vs_speed(res, out.with_suffix(".png"))
    plot_results(plot, res, out)


def plot_hr_vs_speed(res: dict, path: Path) -> None:
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


# ---------------------------------------------------------------- interaction suite
def run_interaction(names: list[str], args, work: Path) -> dict:
    from twotower.data.simulator import SimulatorConfig, simulate
    from twotower.eval.simulator import HeldOut, run_scores

    models = SUITES["interaction"]
    res: dict = {"suite": "interaction", "models": {n: {} for n in names},
                 "common_model": COMMON_MODEL, "common_objective": COMMON_OBJECTIVE,
                 "ml_epochs": args.ml_epochs, "sim_epochs": args.sim_epochs,
                 "tuning_budget": "none: every model uses the preset lr/batch and COMMON_MODEL sizes",
                 "notes": {n: models[n].note for n in names}}
    base_train = {"progress": False, "threads": 2, "checkpoint_every": 1_000_000}
    if "ml" not in args.skip:
        ml, _ = prepared_movielens(args, work)
        for n in (n for n in names if not models[n].sim_only):
            cfg = make_config("movielens", ml, work / "ml" / n, models[n],
                              {**base_train, "epochs": args.ml_epochs, "batch_size": 1024,
                               "lr": 0.003}, history_len=50)
            s, run = train(cfg)
            m = s.metrics
            res["models"][n]["ml"] = {
                **{k: m[k] for k in ("hr@10", "hr@50", "ndcg@10", "ndcg@50")}, **speed(s, run),
                "epochs_run": s.report["train"]["epochs"], "best_epoch": s.report["train"]["best_epoch"]}
            print(f"[ml] {n}: {json.dumps(res['models'][n]['ml'])}", flush=True)
    if "sim" not in args.skip:
        sim = SimulatorConfig(n_impressions=args.impressions, n_ads=3000, n_queries=2000, n_users=1500)
        sim_dir = work / "sim_data"
        simulate(sim, sim_dir)
        held = HeldOut(sim_dir, max_searches=args.searches)
        res["simulator"] = sim.model_dump()
        for n in names:
            cfg = make_config("simulator", sim_dir, work / "sim" / n, models[n],
                              {**base_train, "epochs": args.sim_epochs})
            s, run = train(cfg)
            m = held.metrics(run_scores(s.run_dir, held), [50])
            res["models"][n]["sim"] = {"relevant@50": m["relevant@50"], "cpm@50": m["cpm@50"],
                                       "recall@50": s.metrics.get("recall@50"), **speed(s, run)}
            print(f"[sim] {n}: {json.dumps(res['models'][n]['sim'])}", flush=True)
    flat = {n: {f"{part} {k}": v for part in ("ml", "sim") for k, v in r.get(part, {}).items()}
            for n, r in res["models"].items()}
    res["table"] = format_table(flat, [
        ("ML hr@10", "ml hr@10"), ("ML hr@50", "ml hr@50"), ("ML ndcg@10", "ml ndcg@10"),
        ("ML ndcg@50", "ml ndcg@50"), ("sim rel@50", "sim relevant@50"), ("sim CPM@50", "sim cpm@50"),
        ("params ML", "ml params"), ("ex/s ML", "ml examples_per_s"),
        ("ex/s sim", "sim examples_per_s")])
    return res


# ---------------------------------------------------------------- sequence suite
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


def evaluate_sequence(run, items_path: Path, ks=(10, 50), split: str = "test") -> dict:
    """HR / NDCG of ``split`` by the library's ranking code, diversity@50 and (ComiRec)
    aggregation."""
    import torch

    from twotower.eval.metrics import ranking_metrics
    from twotower.eval.offline import encode_corpus, encode_queries, rank_targets
    from twotower.serve.aggregation import controllable_aggregate

    corpus = run.corpus()
    req = run.requests(split)
    items = encode_corpus(run.model, corpus)
    q = encode_queries(run.model, req.query)
    ranks, t_req, top = rank_targets(q, items, req.targets, req.exclude, top_k=200)
    metrics = ranking_metrics(ranks, t_req, len(req), list(ks))
    out = {key: metrics[key] for k in ks for key in (f"hr@{k}", f"ndcg@{k}")}
    genres = genre_matrix(items_path, np.asarray(corpus.ids))
    out["diversity@50"] = diversity(top[:, :50], genres)
    if q.shape[1] > 1 and run.config.model.name.startswith("comirec"):
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


def run_sequence(names: list[str], args, work: Path) -> dict:
    models = SUITES["sequence"]
    ml, paths = prepared_movielens(args, work)
    res: dict = {"suite": "sequence", "steps": args.steps, "batch_size": args.batch,
                 "common_model": COMMON_MODEL, "common_objective": COMMON_OBJECTIVE, "models": {}}
    for n in names:
        cfg = make_config("movielens", ml, work / "runs" / n, models[n],
                          {"epochs": 100, "max_steps": args.steps, "batch_size": args.batch,
                           "progress": False, "threads": 2, "checkpoint_every": 1_000_000,
                           "early_stopping_patience": None}, history_len=50)
        s, run = train(cfg)
        r = evaluate_sequence(run, paths["items"])
        valid = evaluate_sequence(run, paths["items"], split="valid")
        r["valid_hr@10"], r["valid_hr@50"] = valid["hr@10"], valid["hr@50"]
        r.update(speed(s, run))
        r["train_seconds"] = r.pop("seconds")
        r["pipeline_hr@50"] = s.metrics.get("hr@50")  # the pipeline's own metric (cross-check)
        res["models"][n] = r
        print(f"{n}: {json.dumps(r)}", flush=True)
    base = res["models"]["dssm"]["examples_per_s"]
    for r in res["models"].values():
        r["slowdown_vs_dssm"] = base / r["examples_per_s"]  # DSSM's examples/s over the model's
    cols = ["valid_hr@50", "hr@10", "hr@50", "ndcg@10", "ndcg@50", "diversity@50", "params",
            "examples_per_s", "slowdown_vs_dssm"]
    table = format_table(res["models"], [(c, c) for c in cols])
    lines = [table]
    for n, r in res["models"].items():
        for lam, a in r.get("controllable", {}).items():
            lines.append(f"| {n} + aggregation λ={lam} | - | - | {a['hr@50']:.3f} | - | - | "
                         f"{a['diversity@50']:.3f} | - | - | - |")
    res["table"] = "\n".join(lines)
    return res


RUNNERS = {"interaction": run_interaction, "sequence": run_sequence}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", choices=["interaction", "sequence", "all"], default="interaction")
    ap.add_argument("--only", default="", help="comma-separated model names (the baselines always run)")
    ap.add_argument("--data", default=str(DEFAULT_ML))
    ap.add_argument("--workdir", default="/tmp/twotower_bench_zoo")
    ap.add_argument("--out", default=None, help="JSON path (one suite only; default bench/results/)")
    g = ap.add_argument_group("interaction suite")
    g.add_argument("--ml-epochs", type=int, default=8)
    g.add_argument("--sim-epochs", type=int, default=3)
    g.add_argument("--impressions", type=int, default=100_000)
    g.add_argument("--searches", type=int, default=600)
    g.add_argument("--skip", default="", help="'ml' or 'sim' to skip a dataset")
    g = ap.add_argument_group("sequence suite")
    g.add_argument("--steps", type=int, default=40, help="training batches per model")
    g.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if args.out and len(suites) > 1:
        sys.exit("--out names one file: give it with one --suite")
    for suite in suites:
        models = SUITES[suite]
        wanted = [n for n in args.only.split(",") if n] if args.only else list(models)
        names = BASELINES[suite] + [n for n in wanted if n not in BASELINES[suite]]
        if args.only:  # --only picks from this suite's models; the others' names are skipped
            names = [n for n in names if n in models]
        unknown = [n for n in names if n not in models]
        if unknown:
            sys.exit(f"unknown models {unknown}; known in {suite}: {list(models)}")
        t0 = time.perf_counter()
        res = RUNNERS[suite](names, args, Path(args.workdir) / suite)
        res["seconds"] = time.perf_counter() - t0
        write(res, Path(args.out) if args.out else OUT[suite], OUT[suite].stem)


if __name__ == "__main__":
    main()
