"""The PNG beside each bench JSON, drawn with twotower.eval.plots (the helpers the run report uses).

Every bench script calls :func:`plot_results` after writing its JSON. To redraw from the JSON
already in bench/results/ without re-running anything::

    python bench/plots.py            # every known results/*.json -> results/*.png
    python bench/plots.py mobius     # one of them
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from twotower.eval import plots

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _png(out_json: Path, suffix: str = "") -> Path:
    return out_json.with_name(out_json.stem + suffix + ".png")


def plot_ml100k(res: dict, out_json: Path) -> list[Path]:
    rows = {n: r for n, r in res["results"].items() if "error" not in r}
    ours = {n: r["positives_per_s"] for n, r in rows.items() if n.startswith(("twotower", "dssm"))}
    base = "dssm-batch1024" if "dssm-batch1024" in ours else None
    made = [plots.bars(_png(out_json), "MovieLens 100K: training positives/s (2-core CPU)",
                       "positives / s", ours, baseline=base)]
    metrics = [m for m in ("hr@10", "hr@50", "ndcg@10", "ndcg@50") if all(m in r for r in rows.values())]
    if metrics and len(rows) > 1:
        made.append(plots.grouped_bars(_png(out_json, "_quality"), "MovieLens 100K: leave-one-out, "
                                       "every item ranked", "value", metrics,
                                       {n: [r[m] for m in metrics] for n, r in rows.items()}))
    return made


def plot_index(res: dict, out_json: Path) -> list[Path]:
    made = []
    pts, exact = {}, {}
    for name, d in res["datasets"].items():
        flat_qps = d["exact"]["faiss_flat_qps"]
        pts[name] = sorted([(r["qps_batch1000"], r["recall@100"], r["kind"]) for r in d["kinds"]]
                           + [(flat_qps, 1.0, "")])  # the exact baseline, leftmost
        exact[name] = [d["exact"]["faiss_flat_qps"], d["exact"]["twotower_exact_qps"]]
    made.append(plots.tradeoff(_png(out_json), f"{res['n']:,} × {res['dim']}: recall@100 vs queries/s, batches of "
                               "1,000\n(unlabelled leftmost point = FAISS flat, exact, same run)",
                               "queries / s (log)", "recall@100", pts, logx=True, join=False))
    made.append(plots.grouped_bars(_png(out_json, "_exact"), "Exact top-100: FAISS IndexFlatIP vs "
                                   "twotower's pruned scan (same data, same run)", "queries / s",
                                   list(exact), {"FAISS flat": [v[0] for v in exact.values()],
                                                 "twotower exact": [v[1] for v in exact.values()]}))
    return made


def plot_mobius(res: dict, out_json: Path) -> list[Path]:
    ks = res["ks"]
    pts = {name: [(r[f"cpm@{k}"], r[f"relevant@{k}"], f"K={k}") for k in ks]
           for name, r in res["retrieval"].items()}
    made = [plots.tradeoff(_png(out_json), f"MOBIUS on the simulator: relevant@K vs CPM@K "
                           f"({res['searches']} held-out searches, every ad ranked)", "CPM@K",
                           "relevant@K (1 - bad-case rate)", pts,
                           baseline="CTR two-tower (click/unclick)")]
    if res.get("table1"):
        t1 = res["table1"]
        made.append(plots.grouped_bars(_png(out_json, "_table1"), "Table 1 shape: click AUC and "
                                       "relevance of the top-1% pairs by predicted CTR", "value",
                                       list(t1), {"click AUC": [r["auc"] for r in t1.values()],
                                                  "top-1% relevance": [r["top_relevance"] for r in t1.values()]}))
    return made


def plot_serve_load(res: dict, out_json: Path) -> list[Path]:
    made = []
    if "configs" in res:  # several service configurations under the same load
        cfgs = res["configs"]
        made.append(plots.grouped_bars(
            _png(out_json, "_configs"),
            f"/retrieve, {res['items']:,} items, {res['clients']} clients: req/s by service config",
            "req/s", list(cfgs),
            {"steady": [c["steady"]["rps"] for c in cfgs.values()],
             "hot swap": [c["hot_swap"]["rps"] for c in cfgs.values()]}))
    phases = {"steady": res["steady"], "hot swap": res["hot_swap"]}
    title = (f"Service on loopback: {res['items']:,}-item index, {res['clients']} clients\n"
             "(" + ", ".join(f"{n} {p['rps']:.0f} req/s" for n, p in phases.items()) + ")")
    scrape = res.get("metrics_scrape")  # the service's own histogram, read back per phase
    series = {}
    for q in ("p50", "p99"):
        series[f"client {q} (ms)"] = [p[f"{q}_ms"] for p in phases.values()]
        if scrape:
            series[f"/metrics {q} (ms)"] = [scrape["steady"][f"{q}_ms"], scrape["hot_swap"][f"{q}_ms"]]
    return [plots.grouped_bars(_png(out_json), title, "latency (ms)", list(phases), series)] + made


def plot_ddp_scaling(res: dict, out_json: Path) -> list[Path]:
    runs = res["runs"]
    return [plots.bars(_png(out_json), f"Training examples/s on {res['cpus']} cores, global batch "
                       f"{res['global_batch']}:\nthreads vs data-parallel processes",
                       "examples / s", {n: r["examples_per_s"] for n, r in runs.items()},
                       baseline=res["baseline"])]


def plot_zoo(res: dict, out_json: Path) -> list[Path]:
    models = res["models"]
    made = [plots.bars(_png(out_json), "Model zoo, MovieLens 100K: HR@50 (same epochs, no tuning)",
                       "HR@50", {n: m["ml"]["hr@50"] for n, m in models.items() if "ml" in m},
                       baseline="dssm", fmt="{:.3f}")]
    sim = {n: m["sim"]["relevant@50"] for n, m in models.items() if "sim" in m}
    if sim:
        made.append(plots.bars(_png(out_json, "_sim"), "Model zoo, simulator: relevant@50",
                               "relevant@50", sim, baseline="dssm", fmt="{:.3f}"))
    return made


def plot_zoo_sequence(res: dict, out_json: Path) -> list[Path]:
    models = res["models"]
    speed = {n: [(m["examples_per_s"], m["hr@50"], n)] for n, m in models.items()}
    return [plots.tradeoff(_png(out_json), f"MovieLens 100K, {res.get('steps', '?')} batches of "
                           f"{res.get('batch_size', '?')}: test HR@50 vs training examples/s",
                           "training examples / s (log)", "test HR@50", speed, logx=True,
                           join=False),
            plots.bars(_png(out_json, "_hr"), f"Sequence / multi-interest models, MovieLens 100K: HR@50 "
                       f"({res.get('steps', '?')} steps each)", "HR@50",
                       {n: m["hr@50"] for n, m in models.items()}, baseline="dssm", fmt="{:.3f}"),
            plots.bars(_png(out_json, "_throughput"), "Sequence models: training examples/s "
                       "(same run)", "examples / s (log)",
                       {n: m["examples_per_s"] for n, m in models.items()}, baseline="dssm", logy=True)]


def plot_channels(res: dict, out_json: Path) -> list[Path]:
    made = []
    if "ml" in res:
        made.append(plots.bars(_png(out_json), "Channels, MovieLens 100K: HR@50 (test) of each "
                               "channel and merge", "HR@50",
                               {n: r["hr@50"] for n, r in res["ml"]["rows"].items()},
                               baseline="dssm", fmt="{:.3f}"))
    if "sim" in res:
        made.append(plots.bars(_png(out_json, "_sim"), "Channels, simulator: ideal-recall@100 "
                               "(held-out searches)", "ideal-recall@100",
                               {n: r["ideal_recall@100"] for n, r in res["sim"]["rows"].items()},
                               baseline="mobius", fmt="{:.3f}"))
    if "latency" in res:
        lat = res["latency"]
        key = f"clients={lat['clients']}"
        for load_key, suffix in (("clients=1", "_latency1"), (key, "_latency")):
            cfgs = {n: v[load_key] for n, v in lat["configs"].items() if load_key in v}
            made.append(plots.grouped_bars(
                _png(out_json, suffix), f"/retrieve k=100 on loopback, {load_key}: merged vs each "
                "channel alone", "latency (ms)", list(cfgs),
                {"p50 (ms)": [c["p50_ms"] for c in cfgs.values()],
                 "p99 (ms)": [c["p99_ms"] for c in cfgs.values()]}))
    return made


def plot_long_tail(res: dict, out_json: Path) -> list[Path]:
    rows = res["results"]
    metrics = [m for m in ("hr@10", "hr@50", "head_hr@50", "tail_hr@50")
               if all(m in r for r in rows.values())]
    return [plots.grouped_bars(_png(out_json), "MovieLens 100K: SSL, EBR hard negatives, ensemble "
                               "(test; tail = bottom 80% by frequency)", "HR", metrics,
                               {n: [r[m] for m in metrics] for n, r in rows.items()})]


def plot_mining_memory(res: dict, out_json: Path) -> list[Path]:
    rows = res["rows"]
    labels = {f"{r['items'] // 1000}k x {r['queries'] // 1000}k": r for r in rows}
    return [plots.grouped_bars(_png(out_json), "EBR offline mining: peak memory above baseline "
                               "(MB, log) vs the naive [queries, items] matrix", "MB",
                               list(labels),
                               {"chunked miner": [r["peak_above_baseline_mb"] for r in rows],
                                "naive matrix": [r["naive_matrix_gb"] * 1000 for r in rows]},
                               xlabel="items x queries", log=True)]


PLOTTERS: dict[str, Callable[[dict, Path], list[Path]]] = {
    "ml100k": plot_ml100k, "ml100k_cuda": plot_ml100k, "index": plot_index, "ddp_scaling": plot_ddp_scaling,
    "index_16core": plot_index, "mobius": plot_mobius, "serve_load": plot_serve_load,
    "serve_load_metrics": plot_serve_load,
    "zoo": plot_zoo, "zoo_sequence": plot_zoo_sequence, "channels": plot_channels,
    "long_tail": plot_long_tail, "mining_memory": plot_mining_memory,
}


def plot_results(kind: str, res: dict, out_json: str | Path) -> list[Path]:
    """Draw the PNG(s) of one bench's results beside its JSON; prints their paths."""
    made = PLOTTERS[kind](res, Path(out_json))
    for p in made:
        print(f"wrote {p}")
    return made


def main(names: list[str]) -> None:
    for path in sorted(RESULTS.glob("*.json")):
        if (names and path.stem not in names) or path.stem not in PLOTTERS:
            continue
        plot_results(path.stem, json.loads(path.read_text()), path)


if __name__ == "__main__":
    main(sys.argv[1:])
