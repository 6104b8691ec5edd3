"""Model zoo benchmark: every zoo model against the DSSM baseline, in one run, one table.

* MovieLens 100K (BENCHMARK.md §1): leave-one-out, full ranking with seen items removed,
  HR@10/50 and NDCG@10/50 on test.
* The sponsored-search simulator (BENCHMARK.md §2): relevant@50 and CPM@50 of held-out searches,
  from the simulator's truth (``twotower.mobius.evaluate.HeldOut``: CPM@K = mean over the K
  retrieved ads of true CTR x bid, irrelevant ads earning 0).
* Parameters and training examples/s of each model.

Every model gets the same embedding size, tower width, epochs, learning rate and batch size (the
presets' values) and no per-model tuning (tuning budget: 0 extra runs each); early stopping on the
validation split as in the presets. To add a model, add an entry to ``MODELS``.

Usage: .venv/bin/python bench/zoo.py [--only dssm,senet] [--ml-epochs 8] [--sim-epochs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_ML = HERE.parent.parent / "shared" / "data" / "ml-100k"

#: shared by every model (same embedding size / width / output size)
COMMON_MODEL = {"embedding_dim": 32, "hidden": [128], "output_dim": 32, "temperature": 0.05}


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


@dataclass
class ModelSpec:
    """One benchmarked model: its ``model`` section (merged over COMMON_MODEL) and optional
    per-dataset extras (``model`` overrides, or a function rewriting the feature list)."""

    model: dict
    movielens: dict = field(default_factory=dict)
    simulator: dict = field(default_factory=dict)
    ml_features: object = None  # callable(list[dict]) -> list[dict]
    sim_features: object = None
    note: str = ""
    sim_only: bool = False  # needs query text (MGDSPR): MovieLens has none


MODELS: dict[str, ModelSpec] = {
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
}


def _params(run_dir: Path) -> int:
    from twotower.pipeline import load_model
    from twotower.run import RunDir

    return sum(p.numel() for p in load_model(RunDir(run_dir)).parameters())


def _config(kind: str, data_dir: Path, run_dir: Path, spec: ModelSpec, epochs: int):
    from twotower.config import merge
    from twotower.presets import movielens_config, simulator_config

    preset = movielens_config if kind == "movielens" else simulator_config
    extra = spec.movielens if kind == "movielens" else spec.simulator
    model = merge(merge(dict(COMMON_MODEL), spec.model), extra)
    train = {"epochs": epochs, "progress": False, "threads": 2, "checkpoint_every": 1_000_000}
    pinned: dict = {}
    if kind == "movielens":  # the protocol of the recorded zoo results: plain batches of 1024,
        # 50 history items (the fast preset now trains 4096-row batches in softmax blocks)
        train.update(batch_size=1024, lr=0.003)
        pinned = {"history_len": 50, "objective": {"in_batch_block": None}}
    cfg = preset(data_dir, run_dir, model=model, train=train, **pinned)
    rewrite = spec.ml_features if kind == "movielens" else spec.sim_features
    if rewrite is not None:
        raw = cfg.model_dump(mode="json")
        raw["data"]["features"] = rewrite([{k: v for k, v in f.items() if v is not None}
                                           for f in raw["data"]["features"]])
        from twotower.config import validate_config

        cfg = validate_config(raw, f"zoo {kind} config")
    return cfg


def run_movielens(name: str, spec: ModelSpec, data_dir: Path, work: Path, epochs: int) -> dict:
    from twotower.pipeline import train_run

    s = train_run(_config("movielens", data_dir, work / "ml" / name, spec, epochs),
                  overwrite=True, quiet=True)
    m = s.metrics
    return {"hr@10": m["hr@10"], "hr@50": m["hr@50"], "ndcg@10": m["ndcg@10"],
            "ndcg@50": m["ndcg@50"], "params": _params(s.run_dir),
            "examples_per_s": s.report["train"]["examples_per_second"],
            "epochs_run": s.report["train"]["epochs"], "best_epoch": s.report["train"]["best_epoch"],
            "seconds": s.report["train"]["seconds"]}


def run_simulator(name: str, spec: ModelSpec, data_dir: Path, held, work: Path, epochs: int) -> dict:
    from twotower.mobius.evaluate import run_scores
    from twotower.pipeline import train_run

    s = train_run(_config("simulator", data_dir, work / "sim" / name, spec, epochs),
                  overwrite=True, quiet=True)
    m = held.metrics(run_scores(s.run_dir, held), [50])
    return {"relevant@50": m["relevant@50"], "cpm@50": m["cpm@50"],
            "recall@50": s.metrics.get("recall@50"), "params": _params(s.run_dir),
            "examples_per_s": s.report["train"]["examples_per_second"],
            "seconds": s.report["train"]["seconds"]}


def format_table(res: dict) -> str:
    cols = [("ML hr@10", "ml", "hr@10"), ("ML hr@50", "ml", "hr@50"), ("ML ndcg@10", "ml", "ndcg@10"),
            ("ML ndcg@50", "ml", "ndcg@50"), ("sim rel@50", "sim", "relevant@50"),
            ("sim CPM@50", "sim", "cpm@50"), ("params ML", "ml", "params"),
            ("ex/s ML", "ml", "examples_per_s"), ("ex/s sim", "sim", "examples_per_s")]
    head = "| model | " + " | ".join(c[0] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, r in res["models"].items():
        cells = []
        for _, part, key in cols:
            v = r.get(part, {}).get(key)
            if v is None:
                cells.append("-")
            elif key == "params":
                cells.append(f"{v / 1e3:.0f}k")
            elif key == "examples_per_s":
                cells.append(f"{v:,.0f}")
            elif key == "cpm@50":
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated model names (dssm always runs)")
    ap.add_argument("--data", default=str(DEFAULT_ML))
    ap.add_argument("--ml-epochs", type=int, default=8)
    ap.add_argument("--sim-epochs", type=int, default=3)
    ap.add_argument("--impressions", type=int, default=100_000)
    ap.add_argument("--searches", type=int, default=600)
    ap.add_argument("--skip", default="", help="'ml' or 'sim' to skip a dataset")
    ap.add_argument("--workdir", default="/tmp/twotower_bench_zoo")
    ap.add_argument("--out", default=str(HERE / "results" / "zoo.json"))
    args = ap.parse_args()

    import torch

    from twotower.data.movielens import prepare_movielens
    from twotower.data.simulator import SimulatorConfig, simulate
    from twotower.mobius.evaluate import HeldOut

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    work = Path(args.workdir)
    names = list(MODELS) if not args.only else ["dssm"] + [n for n in args.only.split(",") if n != "dssm"]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown models {unknown}; known: {list(MODELS)}")
    res: dict = {"models": {n: {} for n in names}, "common_model": COMMON_MODEL,
                 "ml_epochs": args.ml_epochs, "sim_epochs": args.sim_epochs,
                 "tuning_budget": "none: every model uses the preset lr/batch and COMMON_MODEL sizes",
                 "notes": {n: MODELS[n].note for n in names}}
    if "ml" not in args.skip:
        ml_dir = work / "ml_data"
        if not (ml_dir / "interactions.parquet").is_file():
            prepare_movielens(args.data, ml_dir)
        for n in (n for n in names if not MODELS[n].sim_only):
            res["models"][n]["ml"] = run_movielens(n, MODELS[n], ml_dir, work, args.ml_epochs)
            print(f"[ml] {n}: {json.dumps(res['models'][n]['ml'])}", flush=True)
    if "sim" not in args.skip:
        sim = SimulatorConfig(n_impressions=args.impressions, n_ads=3000, n_queries=2000, n_users=1500)
        sim_dir = work / "sim_data"
        simulate(sim, sim_dir)
        held = HeldOut(sim_dir, max_searches=args.searches)
        res["simulator"] = sim.model_dump()
        for n in names:
            res["models"][n]["sim"] = run_simulator(n, MODELS[n], sim_dir, held, work, args.sim_epochs)
            print(f"[sim] {n}: {json.dumps(res['models'][n]['sim'])}", flush=True)
    res["seconds"] = time.perf_counter() - t0
    table = format_table(res)
    res["table"] = table
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    from plots import plot_results

    plot_results("zoo", res, out)


if __name__ == "__main__":
    main()
