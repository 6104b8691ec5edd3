"""MOBIUS v2 on the scaled sponsored-search simulator (BENCHMARK.md section 2): relevance and
CPM of every contender at K = 10, 50, 100, the v2 options' ablation on VALIDATION searches, the
final comparison on TEST searches, and the shape of the paper's Table 1 for ``mode: paper``.
Writes bench/results/mobius_v2.json and mobius_v2.png (relevant@K vs CPM@K).

    .venv/bin/python bench/mobius.py [--impressions 500000] [--ads 100000] [--only NAME,...]

Runs are cached in --workdir (a run whose report.json exists is not retrained unless --retrain),
so the phases can run as separate bounded jobs under the shared bench lock. Every contender
trains with one torch thread (on a shared 2-core machine a second one only adds spin-waits).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from twotower.data.simulator import SimulatorConfig, load_config, simulate
from twotower.eval.simulator import HeldOut, click_auc_and_top_relevance, run_vectors, teacher_scores
from twotower.mobius.teachers import LexicalTeacher
from twotower.mobius.v2 import two_stage_scores
from twotower.pipeline import train_run
from twotower.presets import mobius_simulator_config, simulator_config
from twotower.run import atomic_write_text

KS = [10, 50, 100]
#: every v2 option set explicitly, so each ablation row changes exactly one thing from paper mode
OFF = {"mode": "v2", "clean_labels": "none", "item_id_dropout": 0.0, "brw_alpha": 1.0}
CLICK, MINUS_BAD = {"retrieval": "click"}, {"retrieval": "click_minus_bad"}

#: name -> (kind, objective.mobius overrides, model overrides[, train overrides]); MOBIUS runs
#: train with --batch rows per step cut into cross joins of --block rows (examples/mobius.yaml)
RUNS = {
    "dssm": ("dssm", {}, {}),
    "ctr": ("mobius", {"mode": "paper", "bad_cases": "none"}, {}),
    "paper": ("mobius", {"mode": "paper", "bad_cases": "active"}, {}),
    "paper_random": ("mobius", {"mode": "paper", "bad_cases": "random"}, {}),
    "v2_off": ("mobius", OFF, CLICK),  # every v2 option off: the row the others change by one
    "v2_clean": ("mobius", {**OFF, "clean_labels": "relabel_bad"}, CLICK),
    "v2_downweight": ("mobius", {**OFF, "clean_labels": "downweight"}, CLICK),
    "v2_minus_bad": ("mobius", OFF, MINUS_BAD),
    "v2_id_dropout": ("mobius", {**OFF, "item_id_dropout": 0.3}, CLICK),
    # Algorithm 1's whole-batch cross join at batch 512 (the large-batch recipe's control)
    "v2_off_batch512": ("mobius", {**OFF, "cross_join_block": None}, CLICK,
                        {"batch_size": 512, "lr": 0.003}),
    "v2": ("mobius", {"mode": "v2"}, {}),  # the shipped defaults (config.MOBIUS_RECIPES["v2"])
}


def train(name: str, data: Path, workdir: Path, args, choice: dict | None = None) -> Path:
    kind, mob, model, *train_over = RUNS[name]
    if choice is not None:  # the v2 row: the options chosen on validation, set explicitly
        mob = {**mob, **{k: v for k, v in choice.items() if k != "retrieval"}}
        model = {**model, "retrieval": choice["retrieval"]}
    run_dir = workdir / name
    if (run_dir / "report.json").is_file() and not args.retrain:
        return run_dir
    common = {"train": {"epochs": args.epochs, "batch_size": 512, "progress": False, "seed": 0,
                        "early_stopping_patience": None, "threads": 1},
              "eval": {"ks": KS, "metric": "relevant_value@100" if mob.get("mode") == "v2"
                       else "recall@50"}}
    if kind == "dssm":
        cfg = simulator_config(data, run_dir, **common)
    else:
        common["train"].update({"batch_size": args.batch, "lr": args.lr,
                                **(train_over[0] if train_over else {})})
        mob = {"cross_join_block": args.block, **mob}
        cfg = mobius_simulator_config(data, run_dir, **common,
                                      objective={"name": "mobius", "mobius": mob})
        for k, v in model.items():
            setattr(cfg.model, k, v)
    for f in cfg.data.features:  # smaller hash tables train faster on CPU, for every contender
        if f.kind.value == "text":
            f.num_buckets = 4096
    t = time.perf_counter()
    s = train_run(cfg, overwrite=True)
    rep = json.loads((run_dir / "report.json").read_text())
    rep["bench"] = {"seconds": time.perf_counter() - t, "train_seconds": s.train.seconds,
                    "examples_per_second": s.train.examples_per_second,
                    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    (run_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    print(f"  trained {name} in {time.perf_counter() - t:.0f}s "
          f"({s.train.examples_per_second:,.0f} impressions/s)", flush=True)
    return run_dir


def variants(vec: dict, bid: torch.Tensor, tune: bool) -> dict[str, torch.Tensor]:
    """Score matrices of a run: plain, BRW (cos x w, the paper), tempered BRW and two-stage."""
    r = vec["retrieval"]
    out = {"plain": r, "brw": r * bid[None, :]}
    if tune and vec["vectors"] == 3:
        for a in (0.25, 0.5, 0.75):
            out[f"brw_alpha{a}"] = r * bid[None, :] ** a
        for n in (300, 1000):
            for floor in (1.0, float("inf")):
                for a in (0.5, 1.0):
                    out[f"two_stage_n{n}_floor{floor}_alpha{a}"] = two_stage_scores(
                        vec["q"], vec["items"], bid, n, a, floor, vec["temperature"], first_stage=r)
    return out


#: ablation row -> the v2 option (and value) it switches on, against v2_off
ABLATION = {"v2_clean": ("clean_labels", "relabel_bad"), "v2_minus_bad": ("retrieval", "click_minus_bad"),
            "v2_id_dropout": ("item_id_dropout", 0.3)}


def objective_value(row: dict) -> tuple:
    """What the v2 recipe is chosen for, in order: relevant@100 >= 0.9 (the bar), then CPM@100;
    below the bar, relevant@100 first."""
    ok = row["relevant@100"] >= 0.9
    return (ok, row["cpm@100"] if ok else row["relevant@100"], row["cpm@100"])


def choose_v2(runs: Path, held, bid) -> dict:
    """The v2 defaults, from VALIDATION searches only: each option of ``ABLATION`` is switched on
    when its row's best BRW variant (``pick``) beats v2_off's on ``objective_value``; brw_alpha
    is the tempering of v2_off's chosen variant (1 = cos x bid, 0 = no weight)."""
    def best(name: str) -> tuple[str, dict]:
        vec = run_vectors(runs / name, held)
        scores = {k: held.metrics(v.double().numpy(), KS) for k, v in
                  variants(vec, bid, tune=True).items()}
        key = max(scores, key=lambda k: objective_value(scores[k]))
        return key, scores[key]

    base_key, base = best("v2_off")
    options = {"clean_labels": "none", "item_id_dropout": 0.0, "retrieval": "click"}
    rows = {"v2_off": {"variant": base_key, **base}}
    for name, (opt, value) in ABLATION.items():
        if not (runs / name / "report.json").is_file():
            continue
        key, row = best(name)
        rows[name] = {"variant": key, **row}
        if objective_value(row) > objective_value(base):
            options[opt] = value
    alpha = {"plain": 0.0, "brw": 1.0}.get(base_key)
    if alpha is None and base_key.startswith("brw_alpha"):
        alpha = float(base_key[len("brw_alpha"):])
    options["brw_alpha"] = 1.0 if alpha is None else alpha  # a two-stage pick keeps the paper's
    return {"options": options, "valid_rows": rows, "v2_off_variant": base_key}


def pick(valid: dict[str, dict]) -> str:
    """The BRW variant chosen on validation: the highest CPM@100 among those keeping
    relevant@100 >= 0.9 (the bar), else the most relevant."""
    ok = {k: v for k, v in valid.items() if v["relevant@100"] >= 0.9}
    pool = ok or valid
    key = "cpm@100" if ok else "relevant@100"
    return max(pool, key=lambda k: pool[k][key])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--ads", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--advertisers", type=int, default=2_000)
    ap.add_argument("--holdout", type=float, default=0.02, help="share of searches in valid / test")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2048, help="MOBIUS rows per step")
    ap.add_argument("--block", type=int, default=512, help="MOBIUS rows per cross join")
    ap.add_argument("--lr", type=float, default=0.006, help="MOBIUS learning rate")
    ap.add_argument("--searches", type=int, default=400, help="held-out searches per split")
    ap.add_argument("--only", default=",".join(RUNS), help="runs to train (comma separated)")
    ap.add_argument("--train-only", action="store_true", help="train, skip the evaluation")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--workdir", default="/tmp/twotower_bench_mobius_v2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mobius_v2.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim = SimulatorConfig(n_impressions=args.impressions, n_ads=args.ads, n_queries=args.queries,
                          n_users=args.users, n_advertisers=args.advertisers,
                          holdout_share=args.holdout)
    work = Path(args.workdir)
    data = work / "data"
    sim_seconds = None
    if not (data / "simulator.json").is_file() or load_config(data) != sim:
        t = time.perf_counter()
        simulate(sim, data)
        sim_seconds = time.perf_counter() - t
        print(f"simulated {args.impressions:,} impressions, {args.ads:,} ads in {sim_seconds:.0f}s")
    names = [n for n in args.only.split(",") if n]
    for name in names:
        if name != "v2":
            train(name, data, work / "runs", args)
    held = {s: HeldOut(data, args.searches, split=s) for s in ("valid", "test")}
    bid = {s: torch.from_numpy(h.bid).float() for s, h in held.items()}
    choice_path = work / "v2_choice.json"
    if "v2" in names:
        choice = choose_v2(work / "runs", held["valid"], bid["valid"])
        atomic_write_text(choice_path, json.dumps(choice, indent=2))
        print("v2 options chosen on validation:", json.dumps(choice), flush=True)
        train("v2", data, work / "runs", args, choice=choice["options"])
    if args.train_only:
        return

    res: dict = {"simulator": sim.model_dump(), "simulate_seconds": sim_seconds, "ks": KS,
                 "v2_choice": json.loads(choice_path.read_text()) if choice_path.is_file() else None,
                 "mobius_training": {"batch_size": args.batch, "cross_join_block": args.block,
                                     "lr": args.lr, "epochs": args.epochs},
                 "relevant_ads_per_search": float(held["test"].relevant.sum(1).mean()),
                 "valid": {}, "test": {}, "runs": {}, "brw_choice": {}}
    for split, h in held.items():
        res[split]["lexical teacher (relevance only)"] = h.metrics(teacher_scores(LexicalTeacher(), h), KS)
        res[split]["oracle (truth: ideal relevant CTR x bid)"] = h.metrics(
            np.where(h.relevant, h.cpm, -1.0), KS)
    done = [n for n in RUNS if (work / "runs" / n / "report.json").is_file()]
    for name in done:
        run = work / "runs" / name
        rep = json.loads((run / "report.json").read_text())
        res["runs"][name] = {"bench": rep.get("bench"), "mobius": rep.get("mobius"),
                             "train": rep.get("train")}
        scores = {}
        for split, h in held.items():
            scores[split] = {k: h.metrics(v.double().numpy(), KS) for k, v in
                             variants(run_vectors(run, h), bid[split], tune=name.startswith("v2")).items()}
            for k, m in scores[split].items():
                res[split][f"{name} {k}"] = m
        if name.startswith("v2"):
            brw_valid = {k: v for k, v in scores["valid"].items() if k != "plain"}
            res["brw_choice"][name] = pick(brw_valid)
    if all(n in done for n in ("ctr", "paper_random", "paper")):
        res["table1"] = {label: click_auc_and_top_relevance(work / "runs" / n, held["test"])
                         for label, n in (("(a) 2-class click/unclick", "ctr"),
                                          ("(b) 3-class, random bad cases", "paper_random"),
                                          ("(c) 3-class, active-learning bad cases", "paper"))}
    res["seconds"] = time.perf_counter() - t0
    res["final"] = final_rows(res)
    res["bars"] = bars(res)
    print(format_tables(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=2, default=str))
    plot(res, out.with_suffix(".png"))


def final_rows(res: dict) -> dict[str, dict]:
    """The test table: every contender plain and with BRW (v2: its BRW chosen on validation)."""
    t = res["test"]
    rows = {"lexical teacher (relevance only)": t["lexical teacher (relevance only)"]}
    for name, label in (("dssm", "DSSM in-batch softmax (clicks)"), ("ctr", "CTR two-tower"),
                        ("paper", "MOBIUS paper mode (Algorithm 1)"), ("v2", "MOBIUS v2 default")):
        if f"{name} plain" in t:
            rows[label] = t[f"{name} plain"]
            rows[label + " + BRW (cos x bid)"] = t[f"{name} brw"]
    if "v2" in res["brw_choice"]:
        choice = res["brw_choice"]["v2"]
        rows[f"MOBIUS v2 default + {choice} (chosen on valid)"] = t[f"v2 {choice}"]
    rows["oracle (truth)"] = t["oracle (truth: ideal relevant CTR x bid)"]
    return rows


def bars(res: dict) -> dict:
    rows, out = res["final"], {}
    lex = rows["lexical teacher (relevance only)"]
    dssm = rows.get("DSSM in-batch softmax (clicks)")
    v2 = [v for k, v in rows.items() if k.startswith("MOBIUS v2 default")]
    if v2 and dssm:
        best = max(v2, key=lambda r: r["cpm@100"] if r["relevant@100"] >= 0.9 else -1)
        out = {"relevant@100>=0.90": best["relevant@100"] >= 0.9,
               "cpm@100>=2x_lexical": best["cpm@100"] >= 2 * lex["cpm@100"],
               "cpm@100>=1.5x_dssm": best["cpm@100"] >= 1.5 * dssm["cpm@100"],
               "ideal_recall@100>=2x_lexical": best["ideal_recall@100"] >= 2 * lex["ideal_recall@100"],
               "v2_row": {k: best[k] for k in ("relevant@100", "cpm@100", "ideal_recall@100")},
               "cpm@100_vs_lexical": best["cpm@100"] / lex["cpm@100"],
               "cpm@100_vs_dssm": best["cpm@100"] / dssm["cpm@100"]}
    return out


def format_tables(res: dict) -> str:
    cols = [f"{m}@{k}" for k in KS for m in ("relevant", "cpm", "ideal_recall")]

    def table(rows: dict) -> list[str]:
        w = max(len(n) for n in rows) + 2
        lines = [f"{'method':<{w}}" + "".join(f"{c:>17}" for c in cols)]
        lines += [f"{n:<{w}}" + "".join(f"{r[c]:>17.4f}" for c in cols) for n, r in rows.items()]
        return lines

    lines = ["VALIDATION (ablation)"] + table(res["valid"]) + ["", "TEST (final)"] + table(res["final"])
    if res.get("table1"):
        lines += ["", f"{'Table 1 shape (paper mode)':<42}{'click AUC':>12}{'top-1% rel.':>14}"]
        lines += [f"{n:<42}{r['auc']:>12.4f}{r['top_relevance']:>14.4f}" for n, r in res["table1"].items()]
    lines += ["", "BRW chosen on validation: " + json.dumps(res["brw_choice"]),
              "bars: " + json.dumps(res["bars"], default=str)]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, r in res["final"].items():
        ax.plot([r[f"relevant@{k}"] for k in KS], [r[f"cpm@{k}"] for k in KS], marker="o", label=name)
    ax.set_xlabel("relevant@K (K = 10, 50, 100)")
    ax.set_ylabel("CPM@K (true CTR x bid, relevant only)")
    ax.set_title("MOBIUS v2 on the scaled simulator (test searches)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


if __name__ == "__main__":
    main()
