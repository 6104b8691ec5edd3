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
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    stop = time.perf_counter() + seconds

    def client(cid: int) -> None:
        with httpx.Client(timeout=10.0) as c:
            i = cid
            while time.perf_counter() < stop:
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
    swap = during() if during else None
    for t in threads:
        t.join()
    a = np.array(lat) * 1000
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        run, queries = make_run(Path(tmp), args.items)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        admin_key = secrets.token_urlsafe(24)
        proc = subprocess.Popen([sys.executable, "-m", "twotower.cli", "serve", str(run),
                                 "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env={**os.environ, "TWOTOWER_API_KEY": admin_key})
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise SystemExit("service did not start")
            scrape0 = httpx.get(url + "/metrics").text
            steady = load(url, queries, args.clients, args.seconds)
            scrape1 = httpx.get(url + "/metrics").text

            def swap() -> dict:
                from twotower.index.ann import load_index, save_index

                time.sleep(args.seconds / 3)
                new = save_index(load_index(run), run)  # a new version of the same index
                t0 = time.perf_counter()
                r = httpx.post(url + "/admin/reload", json={"version": new}, timeout=600,
                               headers={"Authorization": f"Bearer {admin_key}"})
                return {"status": r.status_code, "version": new,
                        "reload_s": time.perf_counter() - t0}

            swapping = load(url, queries, args.clients, args.seconds, during=swap)
            scrape2 = httpx.get(url + "/metrics").text
            version = httpx.get(url + "/health").json().get("index_version")
        finally:
            proc.terminate()
            proc.wait(30)
    scraped = {"steady": scrape_phase(scrape0, scrape1, steady),
               "hot_swap": scrape_phase(scrape1, scrape2, swapping), "excerpt": excerpt(scrape2)}
    res = {"items": args.items, "clients": args.clients, "seconds": args.seconds,
           "steady": steady, "hot_swap": swapping, "version_after": version,
           "metrics_scrape": scraped}
    print(f"service on loopback, {args.items:,}-item ivf-flat index, {args.clients} clients, "
          f"{args.seconds:.0f} s per phase")
    for name, r in (("steady", steady), ("hot swap", swapping)):
        print(f"  {name:<9} {r['requests']:>7} requests  {r['rps']:>7.0f} req/s  "
              f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}")
    print(f"  swap: {swapping['swap']}, serving {version} after")
    for name in ("steady", "hot_swap"):
        m = scraped[name]
        print(f"  /metrics {name:<9} +{m['requests_200_delta']:.0f} requests (clients: "
              f"{m['client_requests']}), histogram p50 {m['p50_ms']:.1f} ms (bucket "
              f"{m['p50_bucket_width_ms']:.0f} ms, within: {m['p50_within_bucket']}), p99 "
              f"{m['p99_ms']:.1f} ms (bucket {m['p99_bucket_width_ms']:.0f} ms, within: "
              f"{m['p99_within_bucket']})")
    print(scraped["excerpt"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    from plots import plot_results

    plot_results("serve_load", res, args.out)


if __name__ == "__main__":
    main()
