"""BENCHMARK.md §3 — the HTTP service under a bounded loopback load, with and without a hot swap.

Trains a small DSSM on the simulator, replaces its index by one of ``--items`` vectors (the run's
ads plus synthetic unit vectors, so the index has the asked size and the run's contract), starts
``twotower serve`` on 127.0.0.1, and runs ``--clients`` concurrent clients for ``--seconds`` each
phase. Phase 2 saves a new index version mid-load and calls POST /admin/reload (admin routes are
off without a key, so the service gets a random one through TWOTOWER_API_KEY). Reports p50 / p99
latency, throughput and errors (must be 0). Traffic goes only to loopback.
After each phase it scrapes ``GET /metrics``: the request counter must have moved by the phase's
requests, and the service's latency histogram (the phase's bucket deltas, quantiles interpolated as
PromQL does) must give the client-measured p50 / p99 within the width of the bucket holding them.
Usage: python bench/serve_load.py [--items 1000000] [--clients 16] [--seconds 30] [--out FILE]
                                  [--configs one-by-one,batched-2-workers,batched] [--baseline-src OLD/src]
Configs: "one-by-one" (--no-batching), "batched" (serve/batcher.py), "batched-2-workers"; "before"
(--baseline-src: the service of another checkout, as installed then). Each gets a single-client
phase, the steady phase and the hot-swap phase; the top-level steady / hot_swap / metrics_scrape
are those of the last config.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from loopback import free_port, loopback_server  # noqa: F401  (bench/channels.py imports free_port from here)

HERE = Path(__file__).resolve().parent


def make_run(tmp: Path, n_items: int) -> tuple[Path, list[dict]]:
    import pyarrow.parquet as pq

    from twotower.data.simulator import SimulatorConfig, simulate
    from twotower.index.ann import build_index, save_index
    from twotower.index.export import read_vectors
    from twotower.index.run_index import read_contract
    from twotower.pipeline import train_run
    from twotower.presets import simulator_config

    simulate(SimulatorConfig(n_impressions=50_000, n_ads=2000), tmp / "data")
    run = tmp / "run"
    train_run(simulator_config(tmp / "data", run, train={"epochs": 1, "progress": False}),
              overwrite=True)
    ids, vecs = read_vectors(run / "embeddings" / "items.parquet")
    rng = np.random.default_rng(0)
    extra = rng.normal(size=(max(n_items - len(vecs), 0), vecs.shape[1])).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    all_ids = np.concatenate([ids.to_numpy(), np.arange(10**7, 10**7 + len(extra))])
    contract = read_contract(run)
    vi = build_index(np.concatenate([vecs, extra]), all_ids, "ivf-flat",
                     normalize=bool(contract.get("normalized")), contract=contract)
    save_index(vi, run)
    t = pq.read_table(tmp / "data" / "impressions.parquet", columns=["user_id", "query_text"])
    queries = t.slice(0, 500).to_pylist()
    return run, queries


def load(url: str, queries: list[dict], clients: int, seconds: float,
         during=None) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)  # clients are made (TLS context ~50 ms) before the clock
    stop = [0.0]

    def client(cid: int) -> None:
        with httpx.Client(timeout=10.0) as c:
            i = cid
            ready.wait()
            while time.perf_counter() < stop[0]:
                body = {"queries": [queries[i % len(queries)]], "k": 50}
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/retrieve", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    errors[0] += not ok
                i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds
    ready.wait()
    swap = during() if during else None
    for t in threads:
        t.join()
    a = np.array(lat or [np.nan]) * 1000
    return {"requests": len(a), "errors": errors[0], "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "rps": len(a) / seconds, "swap": swap}


def scrape_phase(before: str, after: str, phase: dict) -> dict:
    """What /metrics says about one load phase, beside what the clients measured."""
    from twotower.serve.metrics import (bucket_delta, bucket_width_at, histogram_buckets,
                                        quantile_from_buckets)

    def count(text: str, status: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == "twotower_requests_total" and smp.labels == {
                        "route": "/retrieve", "method": "POST", "status": status}:
                    return smp.value
        return 0.0

    name, labels = "twotower_request_latency_seconds", {"route": "/retrieve"}
    try:
        prior = histogram_buckets(before, name, labels)
    except KeyError:  # no /retrieve request before this phase: the series starts at zero
        prior = []
    delta = bucket_delta(histogram_buckets(after, name, labels), prior)
    out = {"requests_200_delta": count(after, "200") - count(before, "200"),
           "client_requests": phase["requests"] - phase["errors"]}
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        hist_ms = quantile_from_buckets(delta, q) * 1000
        width_ms = bucket_width_at(phase[f"{key}_ms"] / 1000) * 1000
        out[f"{key}_ms"] = hist_ms
        out[f"{key}_bucket_width_ms"] = width_ms
        out[f"{key}_within_bucket"] = abs(hist_ms - phase[f"{key}_ms"]) <= width_ms
    return out


def excerpt(text: str) -> str:
    """The scrape's twotower_* lines; of the latency buckets only the /retrieve ones that hold
    observations (count above the previous bucket's), of the batch sizes only le=1 and +Inf."""
    keep, prev = [], {}
    for line in text.splitlines():
        if not line.startswith("twotower_") or "_created" in line:
            continue
        if "_bucket{" in line and "twotower_request_latency" in line:
            count, route = float(line.rsplit(" ", 1)[1]), line.split('route="')[1].split('"')[0]
            held, prev[route] = count > prev.get(route, 0.0), count
            if 'route="/retrieve"' not in line or not (held or 'le="+Inf"' in line):
                continue
        if "_bucket{" in line and "batch_size" in line and 'le="1.0"' not in line and 'le="+Inf"' not in line:
            continue
        keep.append(line)
    return "\n".join(keep)


#: name -> extra `twotower serve` arguments; "before" runs the same service from --baseline-src
CONFIGS = {
    "before": [],
    "one-by-one": ["--no-batching"],
    "batched": [],
    "batched-2-workers": ["--workers", "2"],
}


BEFORE = ("import os, sys, uvicorn; from twotower.serve.app import create_app; "
          "uvicorn.run(create_app(sys.argv[1], api_key=os.environ['TWOTOWER_API_KEY']), "
          "host='127.0.0.1', port=int(sys.argv[2]), "
          "log_level='warning', http='h11', loop='asyncio')")


def server_command(run: Path, extra: list[str], src: str | None) -> Callable[[int], list[str]]:
    """``twotower serve`` of ``run`` with ``extra`` arguments, or (``src``) the service as it was
    in another checkout: its package, uvicorn's pure-Python HTTP (h11) and asyncio loop."""
    if src:
        return lambda port: [sys.executable, "-c", BEFORE, str(run), str(port)]
    return lambda port: [sys.executable, "-m", "twotower.cli", "serve", str(run), "--port",
                         str(port), *extra]


def versions_served(url: str, tries: int = 40) -> list[str]:
    """Index versions reported by /health over fresh connections (every worker, likely)."""
    import httpx

    return sorted({httpx.get(url + "/health", timeout=5).json()["index_version"]
                   for _ in range(tries)})


def measure(run: Path, queries: list[dict], name: str, args) -> dict:
    import httpx

    src = args.baseline_src if name == "before" else None
    admin_key = secrets.token_urlsafe(24)  # admin routes (the hot swap) are off without a key
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               TWOTOWER_API_KEY=admin_key, **({"PYTHONPATH": src} if src else {}))
    with loopback_server(server_command(run, CONFIGS[name], src), env) as url:
        def scrape() -> str | None:  # the "before" service has no /metrics
            r = httpx.get(url + "/metrics", timeout=10)
            return r.text if r.status_code == 200 else None

        load(url, queries, args.clients, 3.0)  # warm-up, not reported
        single = load(url, queries, 1, args.single_seconds)
        scrape0 = scrape()
        steady = load(url, queries, args.clients, args.seconds)
        scrape1 = scrape()

        def swap() -> dict:
            from twotower.index.ann import load_index, save_index

            time.sleep(args.seconds / 3)
            new = save_index(load_index(run), run)  # a new version of the same index -> CURRENT
            t0 = time.perf_counter()
            r = httpx.post(url + "/admin/reload", json={"version": new}, timeout=600,
                           headers={"Authorization": f"Bearer {admin_key}"})
            return {"status": r.status_code, "version": new, "reload_s": time.perf_counter() - t0}

        swapping = load(url, queries, args.clients, args.seconds, during=swap)
        scrape2 = scrape()
        time.sleep(2.5)  # other workers follow CURRENT within their 1 s poll
        after = versions_served(url)
    out = {"args": CONFIGS[name], "src": src, "single": single, "steady": steady,
           "hot_swap": swapping, "versions_after": after}
    if scrape0 is not None and "--workers" not in CONFIGS[name]:  # one worker: one histogram
        out["metrics_scrape"] = {"steady": scrape_phase(scrape0, scrape1, steady),
                                 "hot_swap": scrape_phase(scrape1, scrape2, swapping),
                                 "excerpt": excerpt(scrape2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--single-seconds", type=float, default=10)
    ap.add_argument("--configs", default="one-by-one,batched-2-workers,batched",
                    help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--baseline-src", default=None,
                    help="src/ of the code before (adds config 'before', served from there)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = ap.parse_args()
    names = args.configs.split(",")
    if args.baseline_src and "before" not in names:
        names.insert(0, "before")
    unknown = set(names) - set(CONFIGS)
    if unknown or ("before" in names and not args.baseline_src):
        raise SystemExit(f"unknown configs {sorted(unknown)} (or 'before' without --baseline-src)")

    with tempfile.TemporaryDirectory() as tmp:
        run, queries = make_run(Path(tmp), args.items)
        configs, failed = {}, {}
        for n in names:
            try:
                configs[n] = measure(run, queries, n, args)
            except SystemExit as err:  # another checkout may not read this run: say so, go on
                if n != "before":
                    raise
                failed[n] = str(err)[-2000:]
                print(f"config 'before' left out: {failed[n]}", flush=True)
    names = [n for n in names if n in configs]
    last = configs[names[-1]]
    res = {"items": args.items, "clients": args.clients, "seconds": args.seconds,
           "baseline": names[0], "primary": names[-1], "configs": configs, "failed": failed,
           "steady": last["steady"], "hot_swap": last["hot_swap"],
           "version_after": last["versions_after"][-1]}
    if "metrics_scrape" in last:
        res["metrics_scrape"] = last["metrics_scrape"]
    print(f"service on loopback, {args.items:,}-item ivf-flat index, {args.clients} clients, "
          f"{args.seconds:.0f} s per phase; x = req/s over {names[0]!r} of this run")
    print(f"{'config':<19} {'phase':<9} {'requests':>8} {'req/s':>7} {'x':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'errors':>6}")
    for n, c in configs.items():
        for phase in ("single", "steady", "hot_swap"):
            r = c[phase]
            print(f"{n:<19} {phase:<9} {r['requests']:>8} {r['rps']:>7.0f} "
                  f"{r['rps'] / configs[names[0]][phase]['rps']:>6.2f} "
                  f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6}")
        print(f"{'':<19} swap {c['hot_swap']['swap']}, serving {c['versions_after']} after")
        for phase, m in c.get("metrics_scrape", {}).items():
            if phase != "excerpt":
                print(f"{'':<19} /metrics {phase}: +{m['requests_200_delta']:.0f} requests "
                      f"(clients {m['client_requests']}), p50 {m['p50_ms']:.1f} ms "
                      f"(within bucket: {m['p50_within_bucket']}), p99 {m['p99_ms']:.1f} ms "
                      f"(within bucket: {m['p99_within_bucket']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    from plots import plot_results

    plot_results("serve_load", res, args.out)


if __name__ == "__main__":
    main()
