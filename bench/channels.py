"""Multi-channel retrieval (issue 13): every channel alone and their merge, on MovieLens 100K and on
the simulator, learned vs equal channel weights, and the merged service's latency.

1. MovieLens 100K (BENCHMARK.md §1: leave-one-out, every item ranked, the user's training and
   validation items excluded): channels DSSM (preset `fast`), ComiRec-SA (multi-interest, the
   best of bench/zoo_sequence.py, a short budget), ItemCF (co-occurrence), embedding i2i (the
   DSSM's item vectors) and popularity. HR@N, coverage@N, the overlap matrix and union recall at
   N = 50 and 100; the merge with equal weights and with weights learned by the Thompson bandit from
   a validation feedback log (the sharpness picked on validation HR@50), under several
   calibrations / quotas / debiasing; every setting is measured on validation and test, and the
   goal row is the setting best on validation, reported on test.
2. Simulator (BENCHMARK.md §2): MOBIUS, a CTR two-tower, DSSM, lexical BM25 and popularity
   channels: relevant@K, CPM@K, ideal-recall@K of each and of the merge. Weights are learned by the
   bandit online over rounds of training searches (clicks drawn from the simulator's true CTR of
   the relevant ads delivered); the weights' sharpness is chosen by replay on a validation log and
   the merge setting on the validation searches' truth; then learned vs equal weights by replay
   on a held-out log (the first half of the test searches, logged under random weights) and the
   true metrics on the other half.
3. Latency: `twotower serve --channels` on loopback, a bounded load (1 client, then `--clients`
   clients, `--seconds` each) on the merged service and on each channel served alone; p50 / p99.

Small models and few epochs (CPU, 2 shared cores); the sizes are in the JSON.
Usage: python bench/channels.py [--parts ml,sim,latency] [--out bench/results/channels.json]
Phased (each part <= 10 min on 2 cores; the JSON keeps the parts not re-run):
    python bench/channels.py --parts ml --workdir /tmp/chan
    python bench/channels.py --parts sim --workdir /tmp/chan --reuse
    python bench/channels.py --parts latency --workdir /tmp/chan --reuse
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DEFAULT_ML = HERE.parent.parent / "shared" / "data" / "ml-100k"
NS = (50, 100)


# ------------------------------------------------------------------ helpers
def hits(lists: list[list], targets: list, n: int) -> np.ndarray:
    return np.array([t in set(lst[:n]) for lst, t in zip(lists, targets)])


def coverage(lists: list[list], n: int, n_items: int) -> float:
    return len({x for lst in lists for x in lst[:n]}) / n_items


def overlap_matrix(answers: dict, n: int) -> dict:
    """Mean over requests of |top_n(a) ∩ top_n(b)| / n."""
    names = list(answers)
    out = {}
    for a in names:
        out[a] = {}
        for b in names:
            la, lb = answers[a][0], answers[b][0]
            out[a][b] = float(np.mean([len(set(x[:n]) & set(y[:n])) / n for x, y in zip(la, lb)]))
    return out


def union_hits(answers: dict, targets: list, n: int) -> tuple[float, float]:
    """(union recall of the channels' top n, mean union size)."""
    names = list(answers)
    sets = [set().union(*[set(answers[c][0][r][:n]) for c in names]) for r in range(len(targets))]
    return (float(np.mean([t in s for s, t in zip(sets, targets)])),
            float(np.mean([len(s) for s in sets])))


def merged_ids(merger, answers, n_req, n, exclude, weights):
    return [r["ids"] for r in merger.merge(answers, n_req, n, exclude, weights)]


def feedback_from(merged: list[dict], rewards) -> "object":
    """A Feedback of merged results: one row per delivered item; ``rewards(r, ids) -> array``."""
    import pyarrow as pa

    from twotower.channels.config import LearningConfig
    from twotower.channels.weights import read_feedback

    req, items, chans, rew = [], [], [], []
    for r, res in enumerate(merged):
        req += [r] * len(res["ids"])
        items += list(res["ids"])
        chans += [sorted(b) for b in res["channels"]]
        rew.append(np.asarray(rewards(r, res["ids"]), dtype=np.float64))
    return read_feedback(pa.table({"request_id": req, "item_id": items,
                                   "channels": [" ".join(c) for c in chans],
                                   "click": np.concatenate(rew) if rew else np.zeros(0)}),
                         LearningConfig())


def train_once(args, run_dir: Path, make_config, extra: dict | None = None,
               data: dict | None = None) -> dict:
    """Train ``make_config()`` into ``run_dir`` (or, with ``--reuse``, keep the run a previous
    phase trained there on the same data with the same config); returns what the training
    reported (seconds, validation metric)."""
    from twotower.pipeline import train_run

    cfg = make_config()
    signature = {"config": cfg.model_dump(mode="json"), "data": data or {}}
    info_path = run_dir / "bench_trained.json"
    if args.reuse and info_path.is_file():
        old = json.loads(info_path.read_text())
        if json.dumps(old.get("signature"), sort_keys=True, default=str) == json.dumps(
                json.loads(json.dumps(signature, default=str)), sort_keys=True):
            return {k: v for k, v in old.items() if k != "signature"} | {"reused": True}
    t0 = time.perf_counter()
    s = train_run(cfg, overwrite=True)
    info = {"metrics": {k: v for k, v in s.metrics.items() if isinstance(v, (int, float))},
            "seconds": time.perf_counter() - t0, **(extra or {}), "signature": signature}
    info_path.write_text(json.dumps(info, indent=2, default=str))
    return {k: v for k, v in info.items() if k != "signature"}


# ------------------------------------------------------------------ 1. MovieLens
def ml_part(args, work: Path) -> dict:
    import pyarrow.parquet as pq

    from twotower.channels.config import LearningConfig, validate_channels
    from twotower.channels.merge import Merger
    from twotower.channels.service import ChannelService, build_channels
    from twotower.channels.weights import ChannelBandit
    from twotower.data.movielens import prepare_movielens
    from twotower.presets import movielens_config

    t_start = time.perf_counter()
    ml = work / "ml"
    paths = prepare_movielens(args.ml_data, ml)
    runs, trained = work / "ml_runs", {}
    trained["dssm"] = train_once(args, runs / "dssm", lambda: movielens_config(
        ml, runs / "dssm", "fast", train={"epochs": args.ml_epochs, "progress": False, "seed": 0}),
        {"epochs": args.ml_epochs})
    print(f"  dssm trained: {trained['dssm']}", flush=True)
    trained["comirec_sa"] = train_once(args, runs / "comirec", lambda: movielens_config(
        ml, runs / "comirec", history_len=50, model={
            "name": "comirec_sa", "num_interests": 4, "embedding_dim": 32, "hidden": [128],
            "output_dim": 32}, objective={"temperature": 0.05, "in_batch_block": None}, train={
            "epochs": 100, "max_steps": args.comirec_steps, "batch_size": 1024, "lr": 0.003,
            "progress": False, "seed": 0, "checkpoint_every": 1_000_000,
            "early_stopping_patience": None}), {"steps": args.comirec_steps})
    print(f"  comirec trained: {trained['comirec_sa']}", flush=True)

    log = str(paths["interactions"])
    spec = {"name": "ml", "output": str(work / "ml_channels"),
            "merge": {"n": 100, "fetch_k": args.fetch_k, "calibration": "rrf"},
            "service": {"budget_ms": 600_000},
            "channels": [
                {"name": "dssm", "kind": "run", "run": str(runs / "dssm")},
                {"name": "comirec_sa", "kind": "run", "run": str(runs / "comirec")},
                {"name": "itemcf", "kind": "itemcf", "log": log, "split_column": "split",
                 "history_field": "history", "recent": 20, "neighbours": 300},
                {"name": "i2i", "kind": "i2i", "run": str(runs / "dssm"), "history_field": "history",
                 "recent": 20},
                {"name": "popularity", "kind": "popularity", "log": log, "split_column": "split",
                 "timestamp": "timestamp", "half_life_days": 60}]}
    cfg = validate_channels(spec, "bench ml channels")
    build_channels(cfg, log=lambda *a: None)
    svc = ChannelService(cfg)

    t = pq.read_table(paths["interactions"]).to_pylist()
    seen_train: dict = {}
    for row in t:
        if row["split"] == "train":
            seen_train.setdefault(row["user_id"], []).append(row["item_id"])
    fields = svc.query_columns

    def split_requests(split: str):
        rows = [r for r in t if r["split"] == split]
        reqs = [{f: r[f] for f in fields if f in r} for r in rows]
        targets = [r["item_id"] for r in rows]
        excl = [list(seen_train.get(r["user_id"], [])) for r in rows]
        if split == "test":  # the validation item is removed from the test ranking too
            valid = {r["user_id"]: r["item_id"] for r in t if r["split"] == "valid"}
            excl = [e + ([valid[r["user_id"]]] if r["user_id"] in valid else [])
                    for e, r in zip(excl, rows)]
        return reqs, targets, excl

    n_items = pq.read_table(paths["items"]).num_rows
    out = {"trained": trained, "fetch_k": args.fetch_k, "n_items": n_items}
    splits = {}
    for split in ("valid", "test"):
        reqs, targets, excl = split_requests(split)
        t0 = time.perf_counter()
        answers, failures, ms = svc.fetch(reqs, excl)
        assert not failures, failures
        splits[split] = (reqs, targets, excl, answers)
        out[f"{split}_fetch_seconds"] = time.perf_counter() - t0
        out[f"{split}_channel_ms"] = ms
        print(f"  {split}: channels answered {len(reqs)} requests in "
              f"{out[f'{split}_fetch_seconds']:.1f}s {ms}", flush=True)
    # learned weights: the Thompson bandit on validation feedback (merged top 100 under equal
    # weights, reward = the held-out validation item); the sharpness is chosen on validation HR@50
    reqs, targets, excl, answers = splits["valid"]
    equal = {c: 1.0 for c in svc.channels}
    merged_valid = svc.merger.merge(answers, len(reqs), 100, excl, equal)
    fb = feedback_from(merged_valid, lambda r, ids: [x == targets[r] for x in ids])
    tuning = {}
    for sharp in (1.0, 2.0, 4.0, 8.0, 16.0):
        b = ChannelBandit(list(svc.channels), LearningConfig(sharpness=sharp, floor=0.02))
        b.update(fb)
        w = b.weights()
        tuning[str(sharp)] = {"weights": w, "valid_hr@50": float(hits(
            merged_ids(svc.merger, answers, len(reqs), 50, excl, w), targets, 50).mean())}
    best = max(tuning, key=lambda s: tuning[s]["valid_hr@50"])
    learned = tuning[best]["weights"]
    out["weight_tuning"] = tuning
    out["learned_sharpness"] = float(best)
    out["learned_weights"] = learned

    train_count = {}
    for row in t:
        if row["split"] == "train":
            train_count[row["item_id"]] = train_count.get(row["item_id"], 0) + 1
    order = sorted(train_count, key=lambda i: -train_count[i])
    head = set(order[: int(0.2 * n_items)])

    def tail_share(lists, n):
        flat = [x for lst in lists for x in lst[:n]]
        return float(np.mean([x not in head for x in flat])) if flat else 0.0

    def list_row(ids, targets):
        return {**{f"hr@{n}": float(hits(ids, targets, n).mean()) for n in NS},
                **{f"coverage@{n}": coverage(ids, n, n_items) for n in NS},
                "tail_share@50": tail_share(ids, 50)}

    def merger_of(**merge):
        raw = {**spec, "merge": {**spec["merge"], **merge}}
        pop = svc.channels["popularity"].popularity if "debias_alpha" in merge else None
        return Merger.from_config(validate_channels(raw, "bench"), popularity=pop)

    # merge settings (calibration, quotas, debiasing, weights): every one is measured on
    # validation and on test; the one the goal reports is the best on *validation*
    variants = {"merge rrf, equal weights": (svc.merger, equal),
                "merge rrf, learned weights": (svc.merger, learned)}
    for rrf_k in (10.0, 200.0):
        variants[f"merge rrf k={rrf_k:g}, learned weights"] = (merger_of(rrf_k=rrf_k), learned)
    for cal in ("zscore", "minmax"):
        variants[f"merge {cal}, equal weights"] = (merger_of(calibration=cal), equal)
        variants[f"merge {cal}, learned weights"] = (merger_of(calibration=cal), learned)
    variants["merge rrf + snake quotas, learned"] = (merger_of(quota="snake"), learned)
    for alpha in (0.1, 0.3):
        variants[f"merge rrf, learned, popularity debias α={alpha}"] = (merger_of(
            debias_alpha=alpha, debias_channel="popularity"), learned)
    valid_rows, rows = {}, {}
    for split, table in (("valid", valid_rows), ("test", rows)):
        reqs, targets, excl, answers = splits[split]
        for name, (ids, _) in answers.items():
            table[name] = list_row(ids, targets)
        for name, (m, w) in variants.items():
            table[name] = list_row(merged_ids(m, answers, len(reqs), max(NS), excl, w), targets)
    reqs, targets, excl, answers = splits["test"]
    out["valid_rows"] = valid_rows
    out["rows"] = rows
    for n in NS:
        out[f"overlap@{n}"] = overlap_matrix(answers, n)
        u, size = union_hits(answers, targets, n)
        out[f"union_recall@{n}"], out[f"union_size@{n}"] = u, size
    singles = {k: v for k, v in rows.items() if k in answers}
    merges = [k for k in rows if k.startswith("merge")]
    chosen = max(merges, key=lambda k: valid_rows[k]["hr@50"])
    best_single = max(singles, key=lambda k: singles[k]["hr@50"])
    out["chosen_on_validation"] = chosen
    out["goal_hr@50"] = {
        "best_single": best_single, "best_single_hr@50": singles[best_single]["hr@50"],
        "merge": chosen, "merge_hr@50": rows[chosen]["hr@50"],
        "merge_valid_hr@50": valid_rows[chosen]["hr@50"],
        "met": rows[chosen]["hr@50"] > singles[best_single]["hr@50"],
        "every_n": {f"hr@{n}": {"merge": rows[chosen][f"hr@{n}"],
                                "best_single": max(v[f"hr@{n}"] for v in singles.values())}
                    for n in NS}}
    out["seconds"] = time.perf_counter() - t_start
    svc.close()
    return out


# ------------------------------------------------------------------ 2. simulator
def sim_list_metrics(held, rows: np.ndarray, lists: list[list], ks=(10, 50, 100)) -> dict:
    """relevant@K, CPM@K, ideal-recall@K of retrieved id lists (an empty slot counts as nothing)."""
    pos = {int(a): j for j, a in enumerate(held.ad_ids)}
    kmax = max(ks)
    idx = np.full((len(lists), kmax), -1)
    for r, lst in enumerate(lists):
        p = [pos[int(x)] for x in lst[:kmax]]
        idx[r, :len(p)] = p
    rel, cpm = held.relevant[rows], held.cpm[rows]
    ideal_order = np.argsort(-np.where(rel, cpm, -1.0), axis=1)[:, :kmax]
    n_rel = rel.sum(1)
    ar = np.arange(len(rows))[:, None]
    out = {}
    for k in ks:
        t = idx[:, :k]
        ok = t >= 0
        tt = np.maximum(t, 0)
        out[f"relevant@{k}"] = float((rel[ar, tt] & ok).sum() / (len(rows) * k))
        out[f"cpm@{k}"] = float((cpm[ar, tt] * ok).sum() / (len(rows) * k))
        ideal = np.zeros_like(rel)
        ideal[ar, ideal_order[:, :k]] = True
        ideal &= rel
        size = np.minimum(n_rel, k)
        hit = (ideal[ar, tt] & ok).sum(1)
        good = size > 0
        out[f"ideal_recall@{k}"] = float((hit[good] / size[good]).mean())
    return out


def sim_setup(args, work: Path) -> tuple[dict, Path, dict, dict]:
    """The simulated world, its trained runs (reused with ``--reuse``) and the channels spec."""
    from twotower.data.simulator import SimulatorConfig, simulate
    from twotower.index.ann import current_version
    from twotower.index.run_index import build_run_index
    from twotower.presets import mobius_simulator_config, simulator_config

    data = work / "sim"
    world = dict(n_impressions=args.sim_impressions, n_ads=args.sim_ads, n_queries=1000,
                 n_users=2000, seed=0)
    marker = data / "bench_world.json"
    if not (args.reuse and marker.is_file() and json.loads(marker.read_text()) == world):
        simulate(SimulatorConfig(**world), data)
        marker.write_text(json.dumps(world))
    train = {"epochs": args.sim_epochs, "batch_size": 512, "progress": False, "seed": 0,
             "early_stopping_patience": None, "threads": 1}
    common = {"train": train, "eval": {"ks": [10, 50, 100]}}

    def shrink(cfg):
        for f in cfg.data.features:
            if f.kind.value == "text":
                f.num_buckets = 4096
        return cfg

    runs, trained = work / "sim_runs", {}
    makers = {
        # MOBIUS: click / unclick / bad with active-learning bad cases (the lexical teacher)
        "mobius": lambda: shrink(mobius_simulator_config(data, runs / "mobius", **common, objective={
            "name": "mobius", "mobius": {"bad_cases": "active", "teacher": "lexical"}})),
        # the CTR channel: the same tower trained on click / unclick only (no relevance)
        "ctr": lambda: shrink(mobius_simulator_config(data, runs / "ctr", **common, objective={
            "name": "mobius", "mobius": {"bad_cases": "none"}})),
        "dssm": lambda: shrink(simulator_config(data, runs / "dssm", **common)),
    }
    for name, make in makers.items():
        trained[name] = train_once(args, runs / name, make, data=world)
        try:
            fresh = not trained[name].get("reused") or not current_version(runs / name)
        except Exception:  # noqa: BLE001 — no index yet
            fresh = True
        if fresh:  # a new model needs a new index (an old one would hold the old vectors)
            build_run_index(runs / name, "flat")
        print(f"  {name} trained: {trained[name]['seconds']:.0f}s", flush=True)
    imp = str(data / "impressions.parquet")
    spec = {"name": "sim", "output": str(work / "sim_channels"),
            "merge": {"n": 100, "fetch_k": args.fetch_k, "calibration": "rrf"},
            "service": {"budget_ms": 600_000},
            "channels": [
                {"name": "mobius", "kind": "run", "run": str(runs / "mobius")},
                {"name": "ctr", "kind": "run", "run": str(runs / "ctr")},
                {"name": "dssm", "kind": "run", "run": str(runs / "dssm")},
                {"name": "lexical", "kind": "bm25", "items": str(data / "ads.parquet"),
                 "item": "ad_id", "text": ["ad_title"], "query_field": "query_text"},
                {"name": "popularity", "kind": "popularity", "log": imp, "item": "ad_id",
                 "label": "click", "split_column": "split", "timestamp": "timestamp",
                 "half_life_days": 7}]}
    return spec, data, trained, world


def sim_requests(held) -> list[dict]:
    return [{"user_id": int(u), "query_text": q} for u, q in
            zip(held.users.tolist(), held.searches["query_text"].to_pylist())]


def sim_part(args, work: Path, spec: dict, data: Path, trained: dict, world: dict) -> dict:
    import pyarrow.parquet as pq

    from twotower.channels.config import LearningConfig, validate_channels
    from twotower.channels.merge import Merger
    from twotower.channels.service import ChannelService, build_channels
    from twotower.channels.weights import (ChannelBandit, WeightsFile, logged_requests,
                                           replay_reward)
    from twotower.data.simulator import SimulatorTruth
    from twotower.eval.simulator import HeldOut

    t_start = time.perf_counter()
    cfg = validate_channels(spec, "bench sim channels")
    build_channels(cfg, log=lambda *a: None)
    svc = ChannelService(cfg)
    names = list(svc.channels)
    truth = SimulatorTruth.load(data)
    rng = np.random.default_rng(0)

    def clicks(users, queries):
        """rewards(r, ids): a click drawn from the true CTR of each delivered relevant ad."""
        def f(r, ids):
            a = np.asarray(ids, dtype=np.int64)
            if not len(a):
                return np.zeros(0)
            q = np.full(len(a), queries[r])
            relevant = truth.relevance(q, a) >= truth.relevance_threshold
            p = truth.true_ctr(np.full(len(a), users[r]), q, a) * relevant
            return (rng.random(len(a)) < p).astype(float)
        return f

    # 1. online learning over rounds of training searches (Thompson draws each round)
    t = pq.read_table(data / "impressions.parquet", filters=[("split", "=", "train")],
                      columns=["search_id", "user_id", "query_id", "query_text"])
    _, first = np.unique(t["search_id"].to_numpy(), return_index=True)
    pick = rng.choice(first, min(args.rounds * args.round_size, len(first)), replace=False)
    tr = t.take(pick)
    tr_users, tr_queries = tr["user_id"].to_numpy(), tr["query_id"].to_numpy()
    tr_reqs = [{"user_id": int(u), "query_text": q} for u, q in
               zip(tr_users.tolist(), tr["query_text"].to_pylist())]
    t0 = time.perf_counter()
    tr_answers, fail, _ = svc.fetch(tr_reqs)
    assert not fail, fail
    bandit = ChannelBandit(names, LearningConfig(floor=0.02, sharpness=args.sharpness), seed=0)
    history = []
    for rnd in range(args.rounds):
        sl = slice(rnd * args.round_size, (rnd + 1) * args.round_size)
        part = {c: (a[0][sl], a[1][sl]) for c, a in tr_answers.items()}
        w = bandit.sample_weights()
        merged = svc.merger.merge(part, len(tr_reqs[sl]), 100, None, w)
        fb = feedback_from(merged, clicks(tr_users[sl], tr_queries[sl]))
        bandit.update(fb)
        history.append({"round": rnd, "weights": w, "clicks": float(fb.reward.sum())})
    learn_seconds = time.perf_counter() - t0
    equal = {c: 1.0 for c in names}

    def weights_at(sharpness: float) -> dict:
        return ChannelBandit(names, LearningConfig(floor=0.02, sharpness=sharpness),
                             impressions=bandit.impressions, rewards=bandit.rewards).weights()

    def logged_replay(answers, users, queries, settings: dict) -> dict:
        """A log of these searches under per-request random weights (Dirichlet) with clicks
        drawn from the truth, then every weight setting replayed on it at N = 50 and 100."""
        n_req = len(users)
        logged = []
        for r in range(n_req):
            w = dict(zip(names, (rng.dirichlet(np.ones(len(names))) * len(names)).tolist()))
            one = {c: ([a[0][r]], [a[1][r]]) for c, a in answers.items()}
            logged.append(svc.merger.merge(one, 1, 100, None, w)[0])
        _, outcomes = logged_requests(feedback_from(logged, clicks(users, queries)), [])
        return {f"{label}@{n}": replay_reward(svc.merger.merge(answers, n_req, n, None, w), outcomes)
                for label, w in settings.items() for n in (50, 100)}

    def merger_of(**merge):
        return Merger.from_config(validate_channels({**spec, "merge": {**spec["merge"], **merge}},
                                                    "bench"))

    variant_mergers = {"rrf": svc.merger, "rrf k=10": merger_of(rrf_k=10.0),
                       "zscore": merger_of(calibration="zscore"),
                       "minmax": merger_of(calibration="minmax"),
                       "rrf + snake quotas": merger_of(quota="snake")}

    # 2. validation searches: the sharpness (replay reward on a validation log) and then the
    # merge settings (ideal-recall@100 on the validation truth) are chosen here, never on test
    valid = HeldOut(data, args.sim_searches, split="valid")
    v_answers, fail, _ = svc.fetch(sim_requests(valid))
    assert not fail, fail
    sharp_grid = (1.0, 2.0, 4.0, 8.0)
    v_replay = logged_replay(v_answers, valid.users, valid.queries,
                             {f"sharpness {s:g}": weights_at(s) for s in sharp_grid})
    sharp = max(sharp_grid, key=lambda s: v_replay[f"sharpness {s:g}@100"]["reward_per_request"])
    learned = weights_at(sharp)
    WeightsFile(cfg.weights_path).save(learned, bandit.stats(), "bench/channels.py online rounds",
                                       {"valid_replay": v_replay[f"sharpness {sharp:g}@100"]})
    v_rows = {c: sim_list_metrics(valid, np.arange(len(valid.users)), ids)
              for c, (ids, _) in v_answers.items()}
    for vname, m in variant_mergers.items():
        for label, w in (("equal", equal), ("learned", learned)):
            v_rows[f"merge {vname}, {label} weights"] = sim_list_metrics(
                valid, np.arange(len(valid.users)),
                merged_ids(m, v_answers, len(valid.users), 100, None, w))
    chosen = max((k for k in v_rows if k.startswith("merge")),
                 key=lambda k: v_rows[k]["ideal_recall@100"])

    # 3. held-out test searches: the first half -> a logged feedback log (random weights),
    # replayed; the second half -> the true metrics
    held = HeldOut(data, args.sim_searches)
    h_reqs = sim_requests(held)
    h_answers, fail, _ = svc.fetch(h_reqs)
    assert not fail, fail
    half = len(h_reqs) // 2
    log_part = {c: (a[0][:half], a[1][:half]) for c, a in h_answers.items()}
    replay_rows = logged_replay(log_part, held.users[:half], held.queries[:half],
                                {"equal": equal, "learned": learned})
    ev = np.arange(half, len(h_reqs))
    ev_answers = {c: (a[0][half:], a[1][half:]) for c, a in h_answers.items()}
    rows = {c: sim_list_metrics(held, ev, ids) for c, (ids, _) in ev_answers.items()}
    for vname, m in variant_mergers.items():
        for label, w in (("equal", equal), ("learned", learned)):
            rows[f"merge {vname}, {label} weights"] = sim_list_metrics(
                held, ev, merged_ids(m, ev_answers, len(ev), 100, None, w))
    union = [sorted(set().union(*[set(ev_answers[c][0][r][:100]) for c in names]))
             for r in range(len(ev))]
    singles = {c: rows[c] for c in names}
    best_single = max(singles, key=lambda c: singles[c]["ideal_recall@100"])
    out = {"world": world, "trained": trained, "rows": rows, "valid_rows": v_rows,
           "chosen_on_validation": chosen, "sharpness_on_validation": sharp,
           "valid_replay": v_replay,
           "overlap@100": overlap_matrix(ev_answers, 100),
           "union_ideal_recall@100_of_union": sim_list_metrics(held, ev, [u for u in union],
                                                               ks=(max(len(u) for u in union),)),
           "mean_union_size@100": float(np.mean([len(u) for u in union])),
           "learned_weights": learned, "bandit_stats": bandit.stats(), "bandit_rounds": history,
           "learn_seconds": learn_seconds,
           "replay": replay_rows, "held_out_searches": len(h_reqs), "replay_searches": half,
           "eval_searches": len(ev), "valid_searches": len(valid.users),
           "goal_ideal_recall@100": {
               "best_single": best_single,
               "best_single_ideal_recall@100": singles[best_single]["ideal_recall@100"],
               "merge": chosen, "merge_ideal_recall@100": rows[chosen]["ideal_recall@100"],
               "met": rows[chosen]["ideal_recall@100"] > singles[best_single]["ideal_recall@100"]},
           "goal_learned_vs_equal_replay": {
               "equal@100": replay_rows["equal@100"]["reward_per_request"],
               "learned@100": replay_rows["learned@100"]["reward_per_request"],
               "equal@50": replay_rows["equal@50"]["reward_per_request"],
               "learned@50": replay_rows["learned@50"]["reward_per_request"],
               "met": replay_rows["learned@100"]["reward_per_request"]
               > replay_rows["equal@100"]["reward_per_request"]},
           "seconds": time.perf_counter() - t_start}
    svc.close()
    return out


# ------------------------------------------------------------------ 3. latency
def load(url: str, queries: list[dict], clients: int, seconds: float, k: int = 100) -> dict:
    import httpx

    lat, errors, failed = [], [0], [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(cid: int) -> None:
        with httpx.Client(timeout=30.0) as c:
            i = cid
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/retrieve", json={"queries": [queries[i % len(queries)]], "k": k})
                    ok = r.status_code == 200
                    bad = ok and bool(r.json().get("failed_channels"))
                except httpx.HTTPError:
                    ok, bad = False, False
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    errors[0] += not ok
                    failed[0] += bad
                i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    a = np.array(lat) * 1000
    if not len(a):
        raise SystemExit(f"{url}: no request finished in {seconds} s — raise --seconds")
    return {"requests": len(a), "errors": errors[0], "with_failed_channels": failed[0],
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "rps": len(a) / seconds}


def latency_part(args, work: Path, spec: dict, queries: list[dict]) -> dict:
    import httpx

    sys.path.insert(0, str(HERE))
    from loopback import loopback_server

    from twotower.channels.config import validate_channels
    from twotower.channels.service import build_channels

    build_channels(validate_channels(spec, "bench latency"), log=lambda *a: None)
    # every service runs its torch / FAISS kernels on --math-threads threads (the same for all,
    # so the comparison is fair); the merged service is also measured with the pools as they are
    threads = {"budget_ms": args.budget_ms, "math_threads": args.math_threads}
    configs = {"merged": {**spec, "service": threads}}
    for ch in spec["channels"]:
        configs[ch["name"]] = {**spec, "channels": [ch], "service": threads}
    configs["merged, default math threads"] = {**spec, "service": {"budget_ms": args.budget_ms}}
    out = {"clients": args.clients, "seconds": args.seconds, "k": 100,
           "math_threads": args.math_threads, "configs": {}}
    for name, s in configs.items():
        path = work / f"latency_{name.replace(' ', '_').replace(',', '')}.yaml"
        if not name.startswith("merged"):  # a channel alone: the merged weights do not apply
            s["learning"] = {"weights_file": str(work / f"latency_{name}.weights.json")}
        path.write_text(yaml.safe_dump(json.loads(json.dumps(s))))
        cmd = lambda port, path=path: [sys.executable, "-m", "twotower", "serve",  # noqa: E731
                                       "--channels", str(path), "--port", str(port)]
        with loopback_server(cmd, log=path.with_suffix(".log")) as url:
            cols = set(httpx.get(url + "/metadata").json()["query_columns"])
            qs = [{f: v for f, v in q.items() if f in cols} for q in queries]
            load(url, qs, 1, 1.0)  # warm-up
            out["configs"][name] = {f"clients={c}": load(url, qs, c, args.seconds)
                                    for c in (1, args.clients)}
            print(f"  latency {name}: {out['configs'][name]}", flush=True)
    for load_key in ("clients=1", f"clients={args.clients}"):
        singles = {k: v[load_key] for k, v in out["configs"].items() if not k.startswith("merged")}
        slowest = max(singles, key=lambda k: singles[k]["p99_ms"])
        m = out["configs"]["merged"][load_key]
        out[f"goal_p99 {load_key}"] = {
            "slowest_single": slowest, "slowest_p99_ms": singles[slowest]["p99_ms"],
            "merged_p99_ms": m["p99_ms"], "ratio": m["p99_ms"] / singles[slowest]["p99_ms"],
            "met": m["p99_ms"] <= 1.5 * singles[slowest]["p99_ms"]}
    return out


# ------------------------------------------------------------------ report
def tables(res: dict) -> str:
    lines = []
    if "ml" in res:
        ml = res["ml"]
        lines += ["MovieLens 100K (leave-one-out, full ranking, test)",
                  "| channel / merge | HR@50 | HR@100 | coverage@50 | coverage@100 | tail share@50 |",
                  "|---|---|---|---|---|---|"]
        for name, r in ml["rows"].items():
            lines.append(f"| {name} | {r['hr@50']:.4f} | {r['hr@100']:.4f} | {r['coverage@50']:.3f} | "
                         f"{r['coverage@100']:.3f} | {r['tail_share@50']:.3f} |")
        lines.append(f"| union of the channels' top N (mean size {ml['union_size@50']:.0f} / "
                     f"{ml['union_size@100']:.0f}) | {ml['union_recall@50']:.4f} | "
                     f"{ml['union_recall@100']:.4f} | | | |")
        names = list(ml["overlap@50"])
        lines += ["", "overlap@50 (mean |A ∩ B| / 50)", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for a in names:
            lines.append(f"| {a} | " + " | ".join(f"{ml['overlap@50'][a][b]:.2f}" for b in names) + " |")
        g = ml["goal_hr@50"]
        lines.append(f"\nlearned weights (sharpness {ml['learned_sharpness']:g}, chosen on validation): "
                     f"{ {k: round(v, 2) for k, v in ml['learned_weights'].items()} }")
        lines.append(f"merge chosen on validation HR@50: {g['merge']}; test HR@50 {g['merge_hr@50']:.4f} "
                     f"vs best single ({g['best_single']}) {g['best_single_hr@50']:.4f}: "
                     f"{'met' if g['met'] else 'NOT met'}")
    if "sim" in res:
        sim = res["sim"]
        cols = [f"{m}@{k}" for k in (10, 100) for m in ("relevant", "cpm", "ideal_recall")]
        lines += ["", f"Simulator ({sim['world']['n_ads']:,} ads, {sim['eval_searches']} held-out "
                  "searches)", "| channel / merge | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for name, r in sim["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
        lines += ["", "replay on the held-out log (logged reward per request of the merged top N)",
                  "| weights | N=50 | N=100 | matched share @100 |", "|---|---|---|---|"]
        for label in ("equal", "learned"):
            rp = sim["replay"]
            lines.append(f"| {label} | {rp[f'{label}@50']['reward_per_request']:.4f} | "
                         f"{rp[f'{label}@100']['reward_per_request']:.4f} | "
                         f"{rp[f'{label}@100']['matched_share']:.3f} |")
        g, gr = sim["goal_ideal_recall@100"], sim["goal_learned_vs_equal_replay"]
        lines.append(f"\nlearned weights (sharpness {sim['sharpness_on_validation']:g}, chosen on "
                     f"validation replay): { {k: round(v, 2) for k, v in sim['learned_weights'].items()} }")
        lines.append(f"merge chosen on validation ideal-recall@100: {g['merge']}; test "
                     f"{g['merge_ideal_recall@100']:.4f} vs best single ({g['best_single']}) "
                     f"{g['best_single_ideal_recall@100']:.4f}: {'met' if g['met'] else 'NOT met'}")
        lines.append(f"replay@100 learned {gr['learned@100']:.4f} vs equal {gr['equal@100']:.4f}: "
                     f"{'met' if gr['met'] else 'NOT met'}")
    if "latency" in res:
        lat = res["latency"]
        lines += ["", f"Latency, /retrieve k=100, 1 and {lat['clients']} clients x {lat['seconds']:.0f} s",
                  "| service | requests | p50 ms | p99 ms | errors | with failed channels |",
                  "|---|---|---|---|---|---|"]
        for name, by_load in lat["configs"].items():
            for load_key, r in by_load.items():
                lines.append(f"| {name}, {load_key} | {r['requests']} | {r['p50_ms']:.1f} | "
                             f"{r['p99_ms']:.1f} | {r['errors']} | {r['with_failed_channels']} |")
        for key in [k for k in lat if k.startswith("goal_p99")]:
            g = lat[key]
            lines.append(f"\n{key}: merged p99 {g['merged_p99_ms']:.1f} ms = {g['ratio']:.2f} x the "
                         f"slowest channel ({g['slowest_single']}, {g['slowest_p99_ms']:.1f} ms): "
                         f"{'met' if g['met'] else 'NOT met'} (goal <= 1.5x)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="ml,sim,latency")
    ap.add_argument("--ml-data", type=Path, default=DEFAULT_ML)
    ap.add_argument("--ml-epochs", type=int, default=12)
    ap.add_argument("--comirec-steps", type=int, default=300)
    ap.add_argument("--fetch-k", type=int, default=200)
    ap.add_argument("--sim-impressions", type=int, default=150_000)
    ap.add_argument("--sim-ads", type=int, default=20_000)
    ap.add_argument("--sim-epochs", type=int, default=4)
    ap.add_argument("--sim-searches", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--round-size", type=int, default=200)
    ap.add_argument("--sharpness", type=float, default=2.0, help="of the online rounds' draws")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--budget-ms", type=float, default=2000.0)
    ap.add_argument("--math-threads", type=int, default=1, help="service.math_threads of every "
                    "served config (torch / FAISS threads)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep data and runs here (phased runs: --parts one at a time + --reuse)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the simulated world and the runs an earlier phase left in --workdir")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "channels.json")
    args = ap.parse_args()
    parts = args.parts.split(",")
    import torch

    torch.set_num_threads(2)
    # the parts not run now keep what an earlier phase measured (same --out)
    res: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    res.update({"cpus": os.cpu_count()})
    res.setdefault("args", {})
    for part in parts:
        res["args"][part] = {k: str(v) for k, v in vars(args).items()}

    def save() -> None:  # after every part: a later failure keeps what was measured
        res["table"] = tables(res)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.out}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "ml" in parts:
            res["ml"] = ml_part(args, work)
            print(f"ml done in {res['ml']['seconds']:.0f}s", flush=True)
            save()
        if "sim" in parts or "latency" in parts:
            spec, data, trained, world = sim_setup(args, work)
            if "sim" in parts:
                res["sim"] = sim_part(args, work, spec, data, trained, world)
                print(f"sim done in {res['sim']['seconds']:.0f}s", flush=True)
                save()
            if "latency" in parts:
                from twotower.eval.simulator import HeldOut

                res["latency"] = latency_part(args, work, spec, sim_requests(HeldOut(data, 200)))
                save()
    print(res["table"])
    sys.path.insert(0, str(HERE))
    from plots import plot_results

    plot_results("channels", res, args.out)


if __name__ == "__main__":
    main()
