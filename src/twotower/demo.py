"""``twotower demo``: the whole path on the built-in simulator in a few minutes on 2 cores.

simulate a sponsored-search log -> train a two-tower model -> evaluate on held-out searches ->
retrieve the top ads for a few queries with the exported vectors -> MOBIUS against the CTR
two-tower and the relevance-only retriever on a small world (~35 s).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from twotower.data.simulator import SimulatorConfig, SimulatorTruth, simulate
from twotower.presets import simulator_config


def run_demo(workdir: Path, impressions: int = 200_000, mobius_impressions: int | None = 50_000
             ) -> dict:
    """``mobius_impressions``: size of the small world of the MOBIUS comparison step (None skips
    it)."""
    from twotower.eval.tables import print_metrics
    from twotower.pipeline import train_run

    workdir = Path(workdir)
    data_dir = workdir / "data"
    n = 5 if mobius_impressions else 4  # steps printed
    t0 = time.perf_counter()
    if not (data_dir / "impressions.parquet").is_file():
        log = simulate(SimulatorConfig(n_impressions=impressions), data_dir)
        print(f"[1/{n}] simulated {impressions:,} impressions ({log.click_rate:.1%} clicked) "
              f"in {time.perf_counter() - t0:.1f}s -> {data_dir}")
    else:
        print(f"[1/{n}] reusing the simulated log in {data_dir}")
    t1 = time.perf_counter()
    cfg = simulator_config(data_dir, workdir / "runs" / "dssm")
    summary = train_run(cfg, overwrite=True)
    print(f"[2/{n}] trained DSSM (in-batch softmax, log-Q corrected) in {time.perf_counter() - t1:.1f}s "
          f"-> {summary.run_dir}")
    cols = [f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg")] + ["mrr"]
    print(f"[3/{n}] held-out searches, every ad ranked:")
    print_metrics("test searches (targets: clicked ads)", {"dssm": summary.metrics}, cols)
    print(f"[4/{n}] index + serve: top ads for held-out searches")
    show_retrievals(summary.run_dir, data_dir)
    if mobius_impressions:
        run_mobius_step(workdir / "mobius", mobius_impressions, n)
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return summary.metrics


def run_mobius_step(workdir: Path, impressions: int, n: int = 5) -> dict:
    """MOBIUS (Fan et al., KDD 2019) with the lexical teacher on a small simulated world, against
    the CTR two-tower it extends and the relevance-only retriever; prints the comparison table."""
    from twotower.comparison import format_tables, run_comparison

    t0 = time.perf_counter()
    data_dir = workdir / "data"
    if not (data_dir / "impressions.parquet").is_file():
        simulate(SimulatorConfig(n_impressions=impressions, n_ads=max(100, impressions // 50),
                                 n_queries=max(50, impressions // 100),
                                 n_users=max(30, impressions * 3 // 500)), data_dir)
    print(f"[{n}/{n}] MOBIUS (3 vectors, click/unclick/bad; bad cases mined with the lexical "
          f"teacher) on a {impressions:,}-impression world:")
    res = run_comparison(data_dir, workdir / "runs", ks=(10, 50), table1=False, dssm=False,
                         max_searches=300, log=print)
    print(format_tables(res))
    r = res["retrieval"]
    ctr, mob = r["CTR two-tower (click/unclick)"], r["MOBIUS (lexical teacher)"]
    print(f"  bad-case rate@10 (irrelevant share of the top 10): CTR two-tower "
          f"{1 - ctr['relevant@10']:.2f} -> MOBIUS {1 - mob['relevant@10']:.2f}")
    print(f"  MOBIUS step took {time.perf_counter() - t0:.1f}s")
    return res


def show_retrievals(run_dir: Path, data_dir: Path, n_queries: int = 3, k: int = 5) -> None:
    """Build an ANN index over the exported ad vectors and answer a few held-out searches through
    the serving runtime (the same ``Retriever`` the HTTP service uses)."""
    from twotower.index.run_index import build_run_index
    from twotower.serve.retriever import Retriever

    vi = build_run_index(run_dir, kind="ivf-flat")
    print(f"  built {vi.kind} index over {vi.count:,} ads ({vi.manifest['params']})")
    retriever = Retriever(run_dir)
    truth = SimulatorTruth.load(data_dir)
    ads = pq.read_table(data_dir / "ads.parquet").to_pydict()
    title = dict(zip(ads["ad_id"], ads["ad_title"]))
    test = pq.read_table(data_dir / "impressions.parquet", filters=[("split", "=", "test")])
    _, first = np.unique(test["query_id"].to_numpy(), return_index=True)
    picks = np.sort(first)[:n_queries]
    rows = test.take(picks).select(["user_id", "query_id", "query_text"]).to_pylist()
    t0 = time.perf_counter()
    answer = retriever.retrieve([{"user_id": r["user_id"], "query_text": r["query_text"]}
                                 for r in rows], k=k)
    ms = (time.perf_counter() - t0) * 1000
    print(f"  {len(rows)} queries answered in {ms:.1f} ms (index version {answer['index_version']})")
    for r, res in zip(rows, answer["results"]):
        print(f"  query {r['query_text']!r} (user {r['user_id']}):")
        got = np.asarray(res["ids"], dtype=np.int64)
        rel = truth.relevance(np.full(len(got), r["query_id"]), got)
        for a, rv in zip(got, rel):
            print(f"     ad {a:>5}  relevance {rv:.2f}  {title[int(a)]}")
