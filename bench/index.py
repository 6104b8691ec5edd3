"""BENCHMARK.md §3 — ANN indexes vs exact search on 1M × 64 vectors, and MOBIUS's Table 2 shape.

Datasets: ``real`` (item vectors exported by a DSSM trained on the simulator, tiled with small
perturbations to N, queries = that run's exported query vectors), ``lowrank`` (rank-8 latent
structure + noise) and ``uniform`` (random unit vectors: the worst case, reported, not tuned for).
For each index kind: build seconds, bytes per item, queries/s (batches of 1,000 and single
queries) and recall@10 / recall@100 against exact search. Exact paths: twotower's chunked torch
search vs FAISS IndexFlatIP, same data, same run. Writes bench/results/index.json.

Usage: python bench/index.py [--n 1000000] [--datasets real lowrank uniform] [--kinds ...]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# before torch / FAISS start OpenMP: spin-waiting threads stall on a shared machine (README)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DIM = 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_vectors(n: int, n_queries: int, rng) -> tuple[np.ndarray, np.ndarray]:
    from twotower.data.simulator import SimulatorConfig, simulate
    from twotower.index.export import read_vectors
    from twotower.pipeline import export_queries, train_run
    from twotower.presets import simulator_config

    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulatorConfig(n_impressions=100_000, n_ads=5000), Path(tmp) / "data")
        cfg = simulator_config(Path(tmp) / "data", Path(tmp) / "run",
                               model={"output_dim": DIM, "embedding_dim": DIM},
                               train={"epochs": 2, "progress": False})
        train_run(cfg, overwrite=True)
        _, items = read_vectors(Path(tmp) / "run" / "embeddings" / "items.parquet")
        export_queries(Path(tmp) / "run")
        _, queries = read_vectors(Path(tmp) / "run" / "embeddings" / "queries.parquet")
    base = items[rng.integers(0, len(items), n)]
    x = unit(base + rng.normal(0, 0.05 / np.sqrt(DIM), base.shape))
    return x, unit(queries[rng.integers(0, len(queries), n_queries)])


def lowrank(n: int, n_queries: int, rng) -> tuple[np.ndarray, np.ndarray]:
    basis = rng.normal(size=(8, DIM))
    make = lambda m: unit(rng.normal(size=(m, 8)) @ basis + 0.1 * rng.normal(size=(m, DIM)))  # noqa: E731
    return make(n), make(n_queries)


def uniform(n: int, n_queries: int, rng) -> tuple[np.ndarray, np.ndarray]:
    return unit(rng.normal(size=(n, DIM))), unit(rng.normal(size=(n_queries, DIM)))


DATASETS = {"real": real_vectors, "lowrank": lowrank, "uniform": uniform}


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k)


def time_exact(x: np.ndarray, q: np.ndarray, k: int, device: str, repeats: int = 3) -> dict:
    """FAISS IndexFlatIP vs twotower's exact path, alternated ``repeats`` times; best time of each
    (on a shared machine the best run is the one least disturbed by other work)."""
    import faiss

    from twotower.index.exact import exact_search

    out = {}
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    xt, qt = torch.from_numpy(x).to(device), torch.from_numpy(q).to(device)
    exact_search(qt[:8], xt, k)  # warm-up
    faiss_s, ours_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, faiss_ids = flat.search(q, k)
        faiss_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, ours = exact_search(qt, xt, k)
        if device != "cpu":
            torch.cuda.synchronize()
        ours_s.append(time.perf_counter() - t0)
    out["faiss_flat_seconds"], out["twotower_exact_seconds"] = faiss_s, ours_s
    out["faiss_flat_qps"] = len(q) / min(faiss_s)
    out["twotower_exact_qps"] = len(q) / min(ours_s)
    out["twotower_exact_device"] = device
    out["exact_agreement@k"] = recall(ours.cpu().numpy(), faiss_ids, k)
    out["speedup_vs_faiss_flat"] = out["twotower_exact_qps"] / out["faiss_flat_qps"]
    if torch.cuda.is_available() and device == "cpu":
        out.update(time_cuda(xt, qt, k))
    return out, faiss_ids


def time_cuda(x: torch.Tensor, q: torch.Tensor, k: int, n_items: int = 10_000_000) -> dict:
    """The exact path on CUDA over ``n_items`` (the data tiled, fp32) for batches of 1 / 64 / 1,024
    queries, against the memory-bandwidth floor: reading the corpus once at ~3 TB/s."""
    from twotower.index.exact import exact_search

    xc = x.cuda().repeat(n_items // len(x) + 1, 1)[:n_items].contiguous()
    qc = q.cuda()
    exact_search(qc[:8], xc, k)
    out = {"cuda_items": n_items}
    for b in (1, 64, 1024):
        qb = qc[:b] if b <= len(qc) else qc.repeat(b // len(qc) + 1, 1)[:b]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            exact_search(qb, xc, k)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 5 * 1000
        floor_ms = xc.numel() * xc.element_size() / 3e12 * 1000
        out[f"cuda_batch{b}_ms"] = ms
        out[f"cuda_batch{b}_x_floor"] = ms / floor_ms
    del xc
    torch.cuda.empty_cache()
    return out


def bench_kind(kind: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, params: dict | None,
               backend: str = "faiss") -> dict | None:
    from twotower.index.ann import build_index

    ids = np.arange(len(x))
    t0 = time.perf_counter()
    if backend == "milvus":  # the same vectors in an embedded milvus-lite file
        from twotower.errors import ConfigError
        from twotower.index.ann import build_milvus_index
        from twotower.index.milvus import check_kind

        db = Path(tempfile.mkdtemp(prefix="tt_milvus_")) / "bench.db"
        try:
            check_kind(kind, str(db))
        except ConfigError as err:
            print(f"milvus {kind}: skipped ({err})")
            return None
        vi = build_milvus_index(x, ids, kind, params, None, False, None, None, str(db), "bench")
    else:
        vi = build_index(x, ids, kind, params)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, lab = vi.search(q, 100)
    batch_qps = len(q) / (time.perf_counter() - t0)
    singles = q[:200]
    t0 = time.perf_counter()
    for row in singles:
        vi.search(row[None, :], 10)
    single_qps = len(singles) / (time.perf_counter() - t0)
    size = (sum(f.stat().st_size for f in db.parent.rglob("*") if f.is_file())
            if backend == "milvus" else vi.nbytes())  # milvus: its files on disk
    return {"kind": kind, "backend": backend, "params": vi.manifest["params"], "build_s": build_s,
            "bytes_per_item": size / len(x), "qps_batch1000": batch_qps,
            "qps_single": single_qps, "recall@10": recall(lab, truth, 10),
            "recall@100": recall(lab, truth, 100)}


def brw_table2(x: np.ndarray, q: np.ndarray, rng, k: int = 100) -> dict:
    """MOBIUS Table 2 shape: uncompressed ANN then BRW re-rank vs OPQ with BRW folded in (MIPS)."""
    from twotower.index.ann import build_index

    w = rng.lognormal(0.0, 0.6, len(x)).astype(np.float32)
    truth = np.argsort(-(q @ x.T) * w[None, :], axis=1)[:, :k]  # brute-force top-K of cos·w
    ids = np.arange(len(x))
    out = {}
    t0 = time.perf_counter()
    hnsw = build_index(x, ids, "hnsw")
    out["ann_rerank_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, cand = hnsw.search(q, k)  # ANN on cosine, then re-rank its K by cos·w
    rer = np.take_along_axis(cand, np.argsort(-(np.einsum("bd,bkd->bk", q, x[cand]) * w[cand]), 1), 1)
    out["ann_rerank_ms_per_query"] = (time.perf_counter() - t0) / len(q) * 1000
    out["ann_rerank_coverage"] = recall(rer, truth, k)
    out["ann_rerank_bytes_per_item"] = hnsw.nbytes() / len(x)
    t0 = time.perf_counter()
    opq = build_index(x, ids, "opq", weights=w, normalize=True)
    out["opq_brw_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, lab = opq.search(q, k)
    out["opq_brw_ms_per_query"] = (time.perf_counter() - t0) / len(q) * 1000
    out["opq_brw_coverage"] = recall(lab, truth, k)
    out["opq_brw_bytes_per_item"] = opq.nbytes() / len(x)
    out["memory_ratio"] = out["opq_brw_bytes_per_item"] / out["ann_rerank_bytes_per_item"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--kinds", nargs="*",
                    default=["flat", "hnsw", "ivf-flat", "ivf-pq", "opq", "sq8", "fp16"])
    ap.add_argument("--device", default="cpu", help="device of twotower's exact path")
    ap.add_argument("--backends", nargs="*", default=["faiss"], choices=["faiss", "milvus"],
                    help="milvus: the same kinds in milvus-lite (pip install 'twotower[milvus]')")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results: dict = {"n": args.n, "dim": DIM, "queries": args.queries,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "datasets": {}}
    for name in args.datasets:
        x, q = DATASETS[name](args.n, args.queries, rng)
        exact, truth = time_exact(x, q, 100, args.device)
        rows = [r for backend in args.backends for kind in args.kinds
                if (r := bench_kind(kind, x, q, truth, None, backend)) is not None]
        results["datasets"][name] = {"exact": exact, "kinds": rows}
        print(f"\n{name}: {args.n:,} x {DIM}, {args.queries} queries | FAISS flat "
              f"{exact['faiss_flat_qps']:.0f} q/s, twotower exact ({args.device}) "
              f"{exact['twotower_exact_qps']:.0f} q/s = {exact['speedup_vs_faiss_flat']:.2f}x")
        print(f"{'backend':<8}{'kind':<10}{'build s':>9}{'B/item':>9}{'q/s@1000':>11}{'q/s@1':>9}"
              f"{'R@10':>7}{'R@100':>7}{'x flat':>8}")
        for r in rows:
            print(f"{r['backend']:<8}{r['kind']:<10}{r['build_s']:>9.1f}{r['bytes_per_item']:>9.1f}"
                  f"{r['qps_batch1000']:>11.0f}{r['qps_single']:>9.0f}{r['recall@10']:>7.3f}"
                  f"{r['recall@100']:>7.3f}{r['qps_batch1000'] / exact['faiss_flat_qps']:>8.1f}")
        if name == "real" and "opq" in args.kinds:
            t2 = brw_table2(x, q[:200], rng)
            results["datasets"][name]["mobius_table2"] = t2
            print("MOBIUS Table 2 shape (K=100, BRW = log-normal weights): "
                  f"coverage {t2['ann_rerank_coverage']:.3f} -> {t2['opq_brw_coverage']:.3f}, "
                  f"latency {t2['ann_rerank_ms_per_query']:.2f} -> {t2['opq_brw_ms_per_query']:.2f} ms, "
                  f"memory {t2['memory_ratio']:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    from plots import plot_results

    plot_results("index", results, args.out)


if __name__ == "__main__":
    main()
