"""MISSION §E, consistency with the later stages (BENCHMARK.md §2, ranker agreement; §1 for ML).

Phase ``sim``: the simulator with funnel logs; side by side, each with the log-Q in-batch softmax as
base: click-only DSSM, weighted DSSM (data.weight_expression over dwell / conversion), DMTL
(a multi-task ranker distilled) and LDM (the ranker's order from funnel.parquet). For held-out
searches every ad is scored; with the simulator's truth: relevant@K, CPM@K, ideal-recall@K,
engagement (mean true CTR x expected dwell seconds, and CTR x conversion rate, of the retrieved
relevant ads) and **ranker agreement@K** = share of the ranker's top-N candidates of the search
(the funnel log's ``ranker_rank <= N``) that retrieval's top-K contains.
Phase ``ml``: MovieLens 100K, rating-weighted vs unweighted DSSM: HR@K and the mean rating of
hits (the held-out item's rating, over the users whose held-out item is retrieved).

Settings (weight expression, DMTL hard_weight, LDM head mix) are chosen on the validation split
only, by the goal's rule: the highest agreement@100 among settings keeping relevant@100 within 5%
of the click-only DSSM's (for weighting: the highest engagement at HR within 0.02); the tables
are test. Run each phase (or simulator part) under the bench lock; the JSON is written after each:
    flock /tmp/tt-bench.lock python bench/consistency.py --only sim --parts dssm weighted
    flock /tmp/tt-bench.lock python bench/consistency.py --only sim --parts dmtl
    flock /tmp/tt-bench.lock python bench/consistency.py --only sim --parts ldm
    flock /tmp/tt-bench.lock python bench/consistency.py --only ml
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_ML = HERE.parent.parent / "shared" / "data" / "ml-100k"
OUT = HERE / "results" / "consistency.json"
KS = [50, 100]
TOP_N = 10  # the ranker's top-N candidates of a search
SIM_WORLD = {"seed": 0, "n_impressions": 300_000, "funnel_log": True}
WEIGHTS = ["1 + 0.5*log1p(dwell) + 2*conversion", "1 + log1p(dwell) + 4*conversion"]
#: (hard_weight, value_column): the funnel's ranker orders by CTR x bid, an eCPM teacher includes bid
DMTL_SETTINGS = [(0.5, "bid"), (0.2, "bid"), (0.5, None)]
LDM_MIX = [0.0, 0.25, 0.5, 0.75, 1.0]
ML_WEIGHTS = ["rating", "rating**2"]


def sim_config(world_dir: Path, run_dir: Path, epochs: int, **sections):
    from twotower.config import merge, validate_config

    raw = {
        "name": run_dir.name, "run_dir": str(run_dir),
        "data": {"train": str(world_dir / "impressions.parquet"), "items": str(world_dir / "ads.parquet"),
                 "item_id": "ad_id", "label": "click", "split_column": "split",
                 "features": [
                     {"name": "user_id", "side": "query"},
                     {"name": "query_text", "side": "query", "kind": "text", "tokens": ["word", "char3"],
                      "num_buckets": 50000, "max_len": 32},
                     {"name": "ad_id", "side": "item"},
                     {"name": "ad_title", "side": "item", "kind": "text", "tokens": ["word", "char3"],
                      "num_buckets": 50000, "max_len": 48},
                     {"name": "ad_category", "side": "item"},
                     {"name": "advertiser_id", "side": "item"}]},
        "model": {"name": "dssm", "embedding_dim": 32, "hidden": [128], "output_dim": 32},
        "objective": {"name": "in_batch_softmax", "temperature": 0.05, "logq_correction": True},
        "train": {"epochs": epochs, "batch_size": 512, "lr": 0.003, "early_stopping_patience": 2,
                  "progress": False, "seed": 0, "checkpoint_every": 100_000},
        "eval": {"ks": KS, "group_by": "search_id", "metric": "recall@50"},
    }
    return validate_config(merge(raw, sections), "bench consistency")


class Judge:
    """Held-out searches of one split with the truth, engagement and the ranker's top-N."""

    def __init__(self, data: Path, split: str, searches: int):
        import pyarrow.parquet as pq

        from twotower.eval.simulator import HeldOut

        self.held = h = HeldOut(data, searches, split)
        users, queries, ads = h.users[:, None], h.queries[:, None], h.ad_ids[None, :]
        ctr = h.truth.ctr_matrix(h.users, h.queries, h.ad_ids)
        self.dwell = ctr * h.truth.expected_dwell(users, queries, ads) * h.relevant
        self.conversion = ctr * h.truth.conversion_rate(users, queries, ads) * h.relevant
        funnel = pq.read_table(data / "funnel.parquet", filters=[("split", "=", split)],
                               columns=["search_id", "ad_id", "ranker_rank"])
        sid = h.searches["search_id"].to_numpy()
        f_sid, f_ad, f_rank = (funnel[c].to_numpy() for c in ("search_id", "ad_id", "ranker_rank"))
        top = f_rank <= TOP_N
        row_of = {int(s): r for r, s in enumerate(sid)}
        col_of = {int(a): j for j, a in enumerate(h.ad_ids)}
        self.ranker_top = np.zeros(h.relevant.shape, bool)  # [R, A]
        for s, a in zip(f_sid[top], f_ad[top]):
            r = row_of.get(int(s))
            if r is not None:
                self.ranker_top[r, col_of[int(a)]] = True
        self.n_top = self.ranker_top.sum(1)

    def metrics(self, scores: np.ndarray) -> dict:
        out = self.held.metrics(scores, KS)
        top = torch.from_numpy(np.asarray(scores, np.float64)).topk(max(KS), dim=1).indices.numpy()
        rows = np.arange(len(top))[:, None]
        ok = self.n_top > 0
        for k in KS:
            t = top[:, :k]
            out[f"agreement@{k}"] = float((self.ranker_top[rows, t].sum(1)[ok] / self.n_top[ok]).mean())
            out[f"dwell@{k}"] = float(self.dwell[rows, t].mean())
            out[f"conversion@{k}"] = float(self.conversion[rows, t].mean())
        return out


def head_scores(run_dir: Path, held, mix: float) -> np.ndarray:
    """[R, A] scores of an LDM run with the two heads mixed by ``mix`` (1: the ranker head)."""
    from twotower.features.dataset import as_tensors
    from twotower.runs import load_run
    from twotower.types import Side
    import pyarrow.parquet as pq

    run = load_run(run_dir)
    with torch.no_grad():
        q = run.model.encode_query(as_tensors(run.features.encode(held.searches, Side.QUERY, count=False)))
        ads = pq.read_table(held.data_dir / "ads.parquet")
        i = run.model.encode_item(as_tensors(run.features.encode(ads, Side.ITEM, count=False)))
        s = mix * run.model.head_logits(q, i, "ranker") + (1 - mix) * run.model.head_logits(q, i, "random")
    return s.numpy()


def choose(valid: dict[str, dict], floor: float, key: str = "agreement@100",
           guard: str = "relevant@100") -> str:
    """The setting with the highest ``key`` among those whose ``guard`` >= floor (else the best guard)."""
    ok = {n: m for n, m in valid.items() if m[guard] >= floor}
    if ok:
        return max(ok, key=lambda n: ok[n][key])
    return max(valid, key=lambda n: valid[n][guard])


SIM_PARTS = ["dssm", "weighted", "dmtl", "ldm"]
LABELS = {"dssm": "click-only DSSM", "weighted": "weighted DSSM", "dmtl": "DMTL", "ldm": "LDM"}


def world(args) -> Path:
    """The simulated world in ``--workdir`` (written once; the same seed writes the same bytes)."""
    from twotower.data.simulator import SimulatorConfig, simulate

    SIM_WORLD["n_impressions"] = args.impressions
    data = args.workdir / f"world-{args.impressions}"
    if not (data / "funnel.parquet").is_file():
        t0 = time.perf_counter()
        simulate(SimulatorConfig(**SIM_WORLD), data)
        print(f"simulated {SIM_WORLD} in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def phase_sim(args, results: dict, parts: list[str]) -> None:
    from twotower.eval.simulator import run_scores
    from twotower.pipeline import train_run

    data = world(args)
    runs_dir = args.workdir / f"runs-{args.impressions}"
    judges = {s: Judge(data, s, args.searches) for s in ("valid", "test")}
    sim = results.setdefault("sim", {})
    if sim.get("world") not in (None, SIM_WORLD) or sim.get("searches") not in (None, args.searches):
        sim.clear()  # parts measured on another world are not comparable
    sim.update({"world": dict(SIM_WORLD), "searches": args.searches, "top_n": TOP_N, "epochs": args.epochs})
    done = sim.setdefault("parts", {})

    def train(name: str, **sections) -> Path:
        t = time.perf_counter()
        s = train_run(sim_config(data, runs_dir / name, args.epochs, **sections), overwrite=True)
        info = {"seconds": time.perf_counter() - t, "best_epoch": s.train.best_epoch,
                "examples_per_second": s.train.examples_per_second}
        print(f"trained {name}: {info}", flush=True)
        return s.run_dir, info

    def judged(run_dir: Path) -> dict:
        return {split: j.metrics(run_scores(run_dir, j.held)) for split, j in judges.items()}

    for part in parts:
        t0 = time.perf_counter()
        if part != "dssm" and "dssm" not in done:
            raise SystemExit("run the dssm part first (its validation numbers set the floors)")
        base = done.get("dssm", {}).get("valid")
        floor = 0.95 * base["relevant@100"] if base else None
        settings, runs = {}, {}
        if part == "dssm":
            run_dir, runs["dssm"] = train("dssm")
            settings["in_batch_softmax"] = judged(run_dir)
            pick = "in_batch_softmax"
        elif part == "weighted":
            for n, expr in enumerate(WEIGHTS):
                run_dir, runs[expr] = train(f"weighted{n}", data={"weight_expression": expr})
                settings[expr] = judged(run_dir)
            pick = choose({e: m["valid"] for e, m in settings.items()},
                          base["ideal_recall@100"] - 0.02, "dwell@100", "ideal_recall@100")
        elif part == "dmtl":
            teacher = None
            for n, (hard, value) in enumerate(DMTL_SETTINGS):
                d = {"engagement": "dwell", "length_column": "page_length", "value_column": value,
                     "hard_weight": hard, "candidates": 32, "teacher_epochs": 2, "teacher": teacher}
                key = f"hard_weight={hard}, value_column={value}"
                run_dir, runs[key] = train(f"dmtl{n}", objective={"name": "dmtl", "dmtl": d})
                teacher = str(run_dir)  # the next setting loads this run's teacher, not retrained
                settings[key] = judged(run_dir)
            pick = choose({k: m["valid"] for k, m in settings.items()}, floor)
        else:
            run_dir, runs["ldm"] = train("ldm", objective={"name": "ldm", "ldm": {
                "funnel": str(data / "funnel.parquet"), "retrieval": "mix", "mix": 0.5}})
            settings = {f"mix={m}": {s: j.metrics(head_scores(run_dir, j.held, m))
                                     for s, j in judges.items()} for m in LDM_MIX}
            pick = choose({k: m["valid"] for k, m in settings.items()}, floor)
        done[part] = {"chosen_on_valid": pick, "valid": settings[pick]["valid"],
                      "test": settings[pick]["test"],
                      "valid_candidates": {k: m["valid"] for k, m in settings.items()},
                      "runs": runs, "seconds": time.perf_counter() - t0}
        sim["test"] = {LABELS[p]: done[p]["test"] for p in SIM_PARTS if p in done}
        if {"dssm", "weighted", "dmtl", "ldm"} <= set(done):
            sim["goals"] = goals(sim["test"])
        save(args, results)
    print_sim(sim)


def goals(table: dict) -> dict:
    base = table["click-only DSSM"]
    out = {}
    for name in ("DMTL", "LDM"):
        r = table[name]
        gain = r["agreement@100"] / base["agreement@100"] - 1
        loss = 1 - r["relevant@100"] / base["relevant@100"]
        out[name] = {"agreement@100_gain": gain, "relevant@100_loss": loss,
                     "met": bool(gain >= 0.20 and loss <= 0.05)}
    w = table["weighted DSSM"]
    out["weighted DSSM"] = {"dwell@100_gain": w["dwell@100"] / base["dwell@100"] - 1,
                            "conversion@100_gain": w["conversion@100"] / base["conversion@100"] - 1,
                            "ideal_recall@100_diff": w["ideal_recall@100"] - base["ideal_recall@100"]}
    return out


SIM_COLS = ["relevant@50", "relevant@100", "cpm@100", "ideal_recall@50", "ideal_recall@100",
            "agreement@50", "agreement@100", "dwell@100", "conversion@100"]


def print_sim(res: dict) -> None:
    if "click-only DSSM" not in res.get("test", {}):
        return
    base = res["test"]["click-only DSSM"]
    print(f"\nsimulator {res['world']}, test ({res['searches']} searches), ranker top-{res['top_n']}")
    print(f"{'variant':<18}" + "".join(f"{c:>17}" for c in SIM_COLS) + f"{'agree@100 x':>13}")
    for name, r in res["test"].items():
        print(f"{name:<18}" + "".join(f"{r[c]:>17.4f}" for c in SIM_COLS)
              + f"{r['agreement@100'] / base['agreement@100']:>13.2f}")
    print("chosen on validation:", {p: r["chosen_on_valid"] for p, r in res["parts"].items()})
    if "goals" in res:
        print("goals:", json.dumps(res["goals"], indent=1))


def phase_ml(args, results: dict) -> None:
    from twotower.config import merge
    from twotower.data.movielens import prepare_movielens
    from twotower.eval.offline import encode_corpus, encode_queries, rank_targets
    from twotower.pipeline import train_run
    from twotower.presets import movielens_config
    from twotower.runs import load_run

    tmp = Path(tempfile.mkdtemp(prefix="tt-consistency-ml-"))
    paths = prepare_movielens(args.ml, tmp / "ml")
    import pyarrow.parquet as pq

    # the run reads only the columns its config names, so the ratings come from the log itself
    # (rows of a split in file order, as the run's requests are)
    log = pq.read_table(paths["interactions"], columns=["split", "rating"])
    ratings = {split: np.asarray(log["rating"].to_numpy(), np.float64)[
        np.asarray(log["split"].to_numpy(zero_copy_only=False)) == split] for split in ("valid", "test")}
    base = {"train": {"batch_size": 1024, "lr": 0.003, "epochs": 12, "progress": False, "seed": 0},
            "objective": {"in_batch_block": None}}
    variants = {"unweighted": {}, **{w: {"data": {"weight_expression": w}} for w in ML_WEIGHTS}}
    scored: dict[str, dict] = {}
    for n, (name, sections) in enumerate(variants.items()):
        cfg = movielens_config(tmp / "ml", tmp / f"run{n}", "fast", **merge(base, sections))
        t = time.perf_counter()
        s = train_run(cfg, overwrite=True)
        run = load_run(s.run_dir)
        corpus = run.corpus()
        items = encode_corpus(run.model, corpus)
        scored[name] = {"seconds": time.perf_counter() - t}
        for split in ("valid", "test"):
            req = run.requests(split)
            rating = ratings[split]
            if len(rating) != len(req):
                raise SystemExit(f"{split}: {len(rating)} rows but {len(req)} requests")
            q = encode_queries(run.model, req.query)[:, 0]
            ranks, r, _ = rank_targets(q.float(), items.float(), req.targets, req.exclude, 50)
            row = {}
            for k in (10, 50):
                hit = ranks < k
                row[f"hr@{k}"] = float(hit.sum() / len(req))
                row[f"hit_rating@{k}"] = float(rating[r[hit]].mean()) if hit.any() else float("nan")
            row["all_rating"] = float(rating.mean())
            scored[name][split] = row
        print(name, scored[name], flush=True)
    floor = scored["unweighted"]["valid"]["hr@50"] - 0.02
    pick = choose({w: scored[w]["valid"] for w in ML_WEIGHTS}, floor, "hit_rating@50", "hr@50")
    results["ml"] = {"test": {"unweighted DSSM": scored["unweighted"]["test"],
                              "rating-weighted DSSM": scored[pick]["test"]},
                     "chosen_on_valid": pick, "all": scored}
    print("\nMovieLens 100K, test (weight chosen on validation:", pick, ")")
    cols = ["hr@10", "hr@50", "hit_rating@10", "hit_rating@50"]
    print(f"{'variant':<24}" + "".join(f"{c:>15}" for c in cols))
    for name, r in results["ml"]["test"].items():
        print(f"{name:<24}" + "".join(f"{r[c]:>15.4f}" for c in cols))


def save(args, results: dict) -> None:
    from twotower.run import atomic_write_text

    results["protocol"] = ("BENCHMARK.md §2 (ranker agreement) and §1 (MovieLens); settings chosen "
                           "on validation, test reported")
    results["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["sim", "ml"], choices=["sim", "ml"])
    ap.add_argument("--parts", nargs="*", default=SIM_PARTS, choices=SIM_PARTS,
                    help="simulator parts to (re)run; dssm first (its numbers set the floors)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--searches", type=int, default=1500)
    ap.add_argument("--impressions", type=int, default=SIM_WORLD["n_impressions"],
                    help="simulator impressions (smaller: a smoke run, not the bench)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tt-consistency",
                    help="the simulated world and runs (kept, so parts can run one at a time)")
    ap.add_argument("--ml", type=Path, default=DEFAULT_ML)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for phase in args.only:
        t = time.perf_counter()
        if phase == "sim":
            phase_sim(args, results, args.parts)
        else:
            phase_ml(args, results)
            results.setdefault("seconds", {})["ml"] = time.perf_counter() - t
            save(args, results)
    plot(json.loads(args.out.read_text()), args.out)


def plot(res: dict, out_json: Path) -> list[Path]:
    """consistency.png (simulator) and consistency_ml.png (MovieLens) beside the JSON."""
    from twotower.eval import plots

    made = []
    if res.get("sim", {}).get("test"):
        rows = res["sim"]["test"]
        metrics = ["relevant@100", "ideal_recall@100", "agreement@50", "agreement@100"]
        made.append(plots.grouped_bars(out_json.with_suffix(".png"), "Simulator: consistency with the "
                                       "ranker (test; agreement = share of the ranker's top-N retrieved)",
                                       "value", metrics, {n: [r[m] for m in metrics] for n, r in rows.items()}))
    if "ml" in res:
        rows = res["ml"]["test"]
        metrics = ["hr@10", "hr@50"]
        made.append(plots.grouped_bars(out_json.with_name(out_json.stem + "_ml.png"), "MovieLens 100K: "
                                       "rating-weighted vs unweighted DSSM (test)", "HR", metrics,
                                       {n: [r[m] for m in metrics] for n, r in rows.items()}))
    for p in made:
        print(f"wrote {p}")
    return made


if __name__ == "__main__":
    main()
