"""``twotower demo``: the whole path on the built-in simulator in a few minutes on 2 cores.

simulate a sponsored-search log -> train a two-tower model -> evaluate on held-out searches ->
retrieve the top ads for a few queries with the exported vectors.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from twotower.data.simulator import SimulatorConfig, SimulatorTruth, simulate
from twotower.index.exact import exact_search
from twotower.presets import simulator_config


def run_demo(workdir: Path, impressions: int = 200_000) -> dict:
    from twotower.cli import print_metrics
    from twotower.pipeline import train_run

    workdir = Path(workdir)
    data_dir = workdir / "data"
    t0 = time.perf_counter()
    if not (data_dir / "impressions.parquet").is_file():
        log = simulate(SimulatorConfig(n_impressions=impressions), data_dir)
        print(f"[1/4] simulated {impressions:,} impressions ({log.click_rate:.1%} clicked) "
              f"in {time.perf_counter() - t0:.1f}s -> {data_dir}")
    else:
        print(f"[1/4] reusing the simulated log in {data_dir}")
    t1 = time.perf_counter()
    cfg = simulator_config(data_dir, workdir / "runs" / "dssm")
    summary = train_run(cfg, overwrite=True)
    print(f"[2/4] trained DSSM (in-batch softmax, log-Q corrected) in {time.perf_counter() - t1:.1f}s "
          f"-> {summary.run_dir}")
    cols = [f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg")] + ["mrr"]
    print("[3/4] held-out searches, every ad ranked:")
    print_metrics("test searches (targets: clicked ads)", {"dssm": summary.metrics}, cols)
    print("[4/4] retrieval with the exported ad vectors:")
    show_retrievals(summary.run_dir, data_dir)
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return summary.metrics


def show_retrievals(run_dir: Path, data_dir: Path, n_queries: int = 3, k: int = 5) -> None:
    from twotower.eval.offline import encode_queries
    from twotower.features.feature_set import FeatureSet
    from twotower.index.export import read_vectors
    from twotower.pipeline import load_model
    from twotower.run import RunDir
    from twotower.types import Side

    run = RunDir(run_dir)
    features = FeatureSet.load(run.features)
    model = load_model(run)
    ids, vecs = read_vectors(run.embeddings / "items.parquet")
    truth = SimulatorTruth.load(data_dir)
    ads = pq.read_table(data_dir / "ads.parquet").to_pydict()
    title = dict(zip(ads["ad_id"], ads["ad_title"]))
    test = pq.read_table(data_dir / "impressions.parquet", filters=[("split", "=", "test")])
    rows = test.slice(0, n_queries * 40).to_pydict()
    seen, picks = set(), []
    for i, q in enumerate(rows["query_id"]):
        if q not in seen:
            seen.add(q)
            picks.append(i)
        if len(picks) == n_queries:
            break
    table = test.take(picks)
    q = encode_queries(model, features.encode(table, Side.QUERY, count=False))
    _, pos = exact_search(q, torch.from_numpy(np.array(vecs)), k)
    ad_ids = ids.to_numpy()
    for r in range(len(picks)):
        query_id = table["query_id"][r].as_py()
        print(f"  query {table['query_text'][r].as_py()!r} (user {table['user_id'][r].as_py()}):")
        got = ad_ids[pos[r].numpy()]
        rel = truth.relevance(np.full(len(got), query_id), got)
        for a, rv in zip(got, rel):
            print(f"     ad {a:>5}  relevance {rv:.2f}  {title[int(a)]}")
