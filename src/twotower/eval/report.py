"""``twotower report RUN_DIR``: PNG plots and one self-contained HTML page in ``RUN_DIR/report/``.

Sections (each drawn when the run has what it needs, otherwise the page says why not):
training and validation loss and the validation metrics per epoch (``metrics.jsonl``); every metric at every K
(``metrics.json``); item coverage and the popularity of retrieved items, head vs tail (the run's
model ranks the evaluation requests again); for MOBIUS runs the bad cases mined per logged step
and relevant@K vs CPM@K beside the baselines found next to the run (on a simulator log); for a
run with an index, recall@K vs queries/s of every index kind built. The HTML embeds its images as
base64 data URIs and uses no script or stylesheet from elsewhere, so it renders offline.
The folder is written to a temporary name and renamed (atomic).
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from twotower.errors import ArtifactError, DataError, TwoTowerError
from twotower.eval import plots
from twotower.run import RunDir, atomic_write_dir

REPORT_DIR = "report"
HEAD_SHARE = 0.2  # "head" = the 20% most popular items of the training log (Pareto's split)


@dataclass
class Section:
    title: str
    images: list[str] = field(default_factory=list)  # PNG names inside the report folder
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    path: Path  # RUN_DIR/report
    sections: list[Section]

    @property
    def plots(self) -> list[str]:
        return [img for s in self.sections for img in s.images]

    @property
    def html(self) -> Path:
        return self.path / "index.html"


# ---------------------------------------------------------------- the run
class _Run:
    """What the sections read, loaded lazily and once (the model only if a section needs it)."""

    def __init__(self, run_dir: Path):
        from twotower.runs import load_run_config

        self.dir = RunDir(run_dir)
        if not self.dir.config.is_file():
            raise ArtifactError(f"{run_dir}: not a run folder (no config.yaml)")
        self.cfg = load_run_config(self.dir)
        self._cache: dict[str, Any] = {}

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def history(self) -> list[dict]:
        def read() -> list[dict]:
            if not self.dir.metrics_log.is_file():
                return []
            rows = []
            for n, line in enumerate(self.dir.metrics_log.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ArtifactError(f"{self.dir.metrics_log}, line {n}: not JSON ({err})") from None
            return rows
        return self._get("history", read)

    def metrics(self) -> dict:
        def read() -> dict:
            if not self.dir.metrics.is_file():
                return {}
            try:
                return json.loads(self.dir.metrics.read_text())
            except json.JSONDecodeError as err:
                raise ArtifactError(f"{self.dir.metrics}: corrupt metrics ({err})") from None
        return self._get("metrics", read)

    def model(self):
        from twotower.runs import load_model

        return self._get("model", lambda: load_model(self.dir))

    def features(self):
        from twotower.features.feature_set import FeatureSet

        return self._get("features", lambda: FeatureSet.load(self.dir.features))

    def data(self):
        from twotower.runs import RunData

        return self._get("data", lambda: RunData(self.cfg, self.features()))

    def corpus(self):
        return self._get("corpus", lambda: self.data().corpus())

    def item_vectors(self) -> torch.Tensor:
        from twotower.eval.offline import encode_corpus

        return self._get("items", lambda: encode_corpus(self.model(), self.corpus()))

    def requests(self, max_requests: int):
        """(split, evaluation requests, at most ``max_requests`` of them, seeded sample)."""
        def make():
            from twotower.features.requests import _subset

            for split in ("test", "valid"):
                req = self.data().requests(split, self.corpus())
                if req is not None and len(req):
                    if len(req) > max_requests:
                        keep = np.zeros(len(req), dtype=bool)
                        keep[np.random.default_rng(0).choice(len(req), max_requests, replace=False)] = True
                        req = _subset(req, keep)
                    return split, req
            raise DataError("the run's config has no valid or test split to rank")
        return self._get("requests", make)

    def query_vectors(self, max_requests: int) -> torch.Tensor:
        from twotower.eval.offline import encode_queries

        return self._get("queries", lambda: encode_queries(self.model(),
                                                           self.requests(max_requests)[1].query))

    def popularity(self) -> np.ndarray:
        """Positive training interactions of every corpus item."""
        def count() -> np.ndarray:
            cfg, feats, corpus = self.cfg, self.features(), self.corpus()
            item_col = feats.configs[feats.item_id].source
            cols = [item_col] + ([cfg.data.label] if cfg.data.label else [])
            counts = np.zeros(len(corpus), dtype=np.int64)
            for chunk in self.data().reader.chunks("train", cols):
                if cfg.data.label:
                    y = np.asarray(chunk[cfg.data.label].cast(pa.float64()).fill_null(0)
                                   .to_numpy(zero_copy_only=False))
                    chunk = chunk.filter(pa.array(y > 0))
                pos = corpus.positions(chunk[item_col])
                counts += np.bincount(pos[pos >= 0], minlength=len(corpus))
            return counts
        return self._get("popularity", count)


# ---------------------------------------------------------------- sections
def training_section(run: _Run, out: Path) -> Section:
    sec = Section("Training")
    hist = run.history()
    epochs = [r for r in hist if "train_loss" in r]
    steps = [r for r in hist if "loss" in r and "train_loss" not in r]
    if not epochs and not steps:
        sec.notes.append(f"no training log ({run.dir.metrics_log.name} is missing or empty)")
        return sec
    loss_series = {}
    if epochs:
        loss_series["training loss (epoch mean)"] = ([r["epoch"] + 1 for r in epochs],
                                                     [r["train_loss"] for r in epochs])
    valid_loss = [(r["epoch"] + 1, r["valid"]["loss"]) for r in epochs
                  if isinstance(r.get("valid"), dict) and "loss" in r["valid"]]
    if valid_loss:
        loss_series["validation loss"] = ([e for e, _ in valid_loss], [v for _, v in valid_loss])
    else:
        sec.notes.append("metrics.jsonl holds no validation loss to draw (the run has no validation "
                         "split, or train.validation_batches is 0)")
    metric = run.cfg.eval.metric
    valid = [(r["epoch"] + 1, r["valid"]) for r in epochs if isinstance(r.get("valid"), dict)]
    right = {}
    if valid:
        names = [metric] + [k for k in valid[0][1] if k != metric and k.split("@")[0] in ("hr", "ndcg")]
        right = {f"validation {n}": ([e for e, _ in valid], [v.get(n, np.nan) for _, v in valid])
                 for n in names[:4] if n in valid[0][1]}
    if loss_series:
        plots.curves(out / "training.png", "Loss and validation metrics per epoch", "epoch",
                     "loss", loss_series, right=right, right_label="validation metric")
        sec.images.append("training.png")
    if steps:
        plots.curves(out / "loss_per_step.png", f"Training loss every {_step_gap(steps)} steps",
                     "step", "loss", {"loss": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                     markers=False)
        sec.images.append("loss_per_step.png")
    rows = [[r["epoch"] + 1, r["step"], _fmt(r["train_loss"]), _fmt(r.get("seconds"))]
            + ([_fmt(r["valid"].get("loss")), _fmt(r["valid"].get(metric))]
               if isinstance(r.get("valid"), dict) else ["-", "-"])
            for r in epochs]
    if rows:
        sec.tables.append(("Epochs", ["epoch", "step", "training loss", "seconds",
                                      "validation loss", f"validation {metric}"], rows))
    best = [r for r in epochs if isinstance(r.get("valid"), dict) and metric in r["valid"]]
    if best:
        b = max(best, key=lambda r: r["valid"][metric])
        sec.notes.append(f"best validation {metric} {b['valid'][metric]:.4f} at epoch {b['epoch'] + 1}")
    sec.data = {"epochs": len(epochs), "logged_steps": len(steps),
                "train_loss": [r["train_loss"] for r in epochs],
                "valid_loss": [v for _, v in valid_loss]}
    return sec


def _step_gap(steps: list[dict]) -> int:
    return int(steps[1]["step"] - steps[0]["step"]) if len(steps) > 1 else 1


def metrics_section(run: _Run, out: Path) -> Section:
    sec = Section("Metrics at every K")
    m = run.metrics()
    ks = sorted({int(k.split("@")[1]) for k in m if re.fullmatch(r"[a-z_]+@\d+", k)})
    if not ks:
        sec.notes.append("no evaluation yet (metrics.json is missing): run `twotower evaluate`")
        return sec
    names = sorted({k.split("@")[0] for k in m if "@" in k})
    series = {n: ([k for k in ks if f"{n}@{k}" in m], [m[f"{n}@{k}"] for k in ks if f"{n}@{k}" in m])
              for n in names}
    plots.curves(out / "metrics_at_k.png", f"{m.get('split', '')} metrics at every K".strip(),
                 "K", "value", series, logx=len(ks) > 2 and ks[-1] / ks[0] >= 10)
    sec.images.append("metrics_at_k.png")
    sec.tables.append((f"{m.get('split', 'evaluation')} split, {m.get('requests', '?')} requests",
                       ["metric"] + [f"@{k}" for k in ks],
                       [[n] + [_fmt(m.get(f"{n}@{k}")) for k in ks] for n in names]
                       + ([["mrr", _fmt(m["mrr"])] + [""] * (len(ks) - 1)] if "mrr" in m else [])))
    sec.data = {"ks": ks, **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
    return sec


def popularity_section(run: _Run, out: Path, max_requests: int) -> Section:
    """Coverage and head/tail: where in the popularity ranking the retrieved items sit."""
    from twotower.eval.offline import rank_targets

    sec = Section("Coverage and popularity of retrieved items")
    split, req = run.requests(max_requests)
    ks = sorted(run.cfg.eval.ks)
    items = run.item_vectors()
    _, _, topk = rank_targets(run.query_vectors(max_requests), items, req.targets, req.exclude,
                              max(ks), run.cfg.eval.chunk_size)
    pop = run.popularity()
    n = len(pop)
    order = np.argsort(-pop, kind="stable")  # most popular first
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    head = rank < max(1, int(round(HEAD_SHARE * n)))
    deciles = np.minimum(rank * 10 // max(n, 1), 9)
    total_pos = max(int(pop.sum()), 1)
    rows, cov, head_share = [], [], []
    for k in ks:
        t = topk[:, :k]
        t = t[t >= 0]
        cov.append(len(np.unique(t)) / max(n, 1))
        head_share.append(float(head[t].mean()) if len(t) else float("nan"))
        rows.append([k, _fmt(cov[-1]), _fmt(head_share[-1]), _fmt(1 - head_share[-1])])
    kmax = topk[topk >= 0]
    retrieved = np.bincount(deciles[kmax], minlength=10) / max(len(kmax), 1)
    interactions = np.bincount(deciles, weights=pop, minlength=10) / total_pos
    labels = [f"{10 * d}-{10 * d + 10}%" for d in range(10)]
    plots.grouped_bars(out / "popularity.png",
                       f"Where retrieved items sit in the training popularity ranking "
                       f"(top-{max(ks)}, {len(req)} {split} requests)",
                       "share", labels, {f"retrieved slots (top-{max(ks)})": retrieved,
                                         "training interactions": interactions},
                       xlabel="items by training popularity (0-10% = the most popular tenth)")
    plots.curves(out / "coverage.png", f"Item coverage and head share ({split})", "K", "share",
                 {"item coverage@K": (ks, cov), f"head share@K (top {HEAD_SHARE:.0%} items)": (ks, head_share)},
                 logx=len(ks) > 2)
    sec.images += ["popularity.png", "coverage.png"]
    head_interactions = float(pop[head].sum() / total_pos)
    sec.tables.append((f"{len(req)} {split} requests, {n:,} items; head = the {head.sum():,} most "
                       f"popular items ({head_interactions:.1%} of training interactions)",
                       ["K", "item coverage", "head share", "tail share"], rows))
    sec.data = {"ks": ks, "coverage": cov, "head_share": head_share,
                "retrieved_by_decile": retrieved.tolist(), "interactions_by_decile": interactions.tolist(),
                "head_interaction_share": head_interactions, "requests": len(req)}
    return sec


def mobius_section(run: _Run, out: Path, max_searches: int) -> Section | None:
    if run.cfg.objective.name != "mobius":
        return None
    sec = Section("MOBIUS")
    steps = [r for r in run.history() if "bad_cases" in r]
    if steps:
        xs = [r["step"] for r in steps]
        series = {"bad cases sampled": (xs, [r["bad_cases"] for r in steps])}
        if all("scored" in r for r in steps):
            series["pairs the teacher scored"] = (xs, [r["scored"] for r in steps])
        if all("pairs" in r for r in steps):
            series["cross-join pairs"] = (xs, [r["pairs"] for r in steps])
        plots.curves(out / "mobius_bad_cases.png", "Bad-case mining per logged step", "step",
                     "count per batch", series, logy=True, markers=False)
        sec.images.append("mobius_bad_cases.png")
        sec.data["bad_cases_per_step_mean"] = float(np.mean([r["bad_cases"] for r in steps]))
    else:
        sec.notes.append("no bad-case counts in metrics.jsonl (bad_cases: none, or still warming up)")
    data_dir = Path(run.cfg.data.train).parent
    if not (data_dir / "truth.npz").is_file():
        sec.notes.append(f"relevant@K / CPM@K need the simulator's truth ({data_dir}/truth.npz); "
                         "this log is not a simulated one")
        return sec
    from twotower.eval.simulator import HeldOut, run_scores, teacher_scores
    from twotower.runs import read_contract
    from twotower.mobius.teachers import LexicalTeacher

    held = HeldOut(data_dir, max_searches)
    ks = sorted(run.cfg.eval.ks)
    methods: dict[str, dict] = {f"{run.dir.root.name} (this run)": held.metrics(run_scores(run.dir.root, held), ks)}
    if read_contract(run.dir.root).get("brw_weight"):  # served with its business weight
        methods[f"{run.dir.root.name} + BRW"] = held.metrics(run_scores(run.dir.root, held, brw=True), ks)
    methods["relevance only (lexical teacher)"] = held.metrics(teacher_scores(LexicalTeacher(), held), ks)
    for other in _sibling_runs(run):
        methods[other.name] = held.metrics(run_scores(other, held), ks)
    pts = {name: [(m[f"cpm@{k}"], m[f"relevant@{k}"], f"K={k}") for k in ks] for name, m in methods.items()}
    plots.tradeoff(out / "mobius_relevance_cpm.png",
                   f"relevant@K vs CPM@K on {len(held.users)} held-out searches", "CPM@K",
                   "relevant@K (1 - bad-case rate)", pts,
                   baseline="relevance only (lexical teacher)")
    sec.images.append("mobius_relevance_cpm.png")
    sec.tables.append(("Simulator truth, every ad ranked", ["method"]
                       + [f"{n}@{k}" for k in ks for n in ("relevant", "cpm")],
                       [[name] + [_fmt(m[f"{n}@{k}"]) for k in ks for n in ("relevant", "cpm")]
                        for name, m in methods.items()]))
    sec.data["retrieval"] = methods
    return sec


def _sibling_runs(run: _Run) -> list[Path]:
    """Other trained runs in the same parent folder on the same training log (the baselines
    ``bench/mobius.py`` and ``twotower demo`` train side by side)."""
    from twotower.runs import load_run_config

    out = []
    parent = run.dir.root.resolve().parent
    for d in sorted(parent.iterdir()):
        if d.resolve() == run.dir.root.resolve() or not (d / "embeddings" / "items.parquet").is_file():
            continue
        try:
            cfg = load_run_config(RunDir(d))
        except TwoTowerError:
            continue
        if Path(cfg.data.train).resolve() == Path(run.cfg.data.train).resolve():
            out.append(d)
    return out[:8]


def index_section(run: _Run, out: Path, max_queries: int) -> Section | None:
    """Every index version built for the run: recall@K against exact search vs queries/s."""
    from twotower.index.ann import index_root, load_index
    from twotower.index.exact import exact_search
    from twotower.index.export import read_vectors

    root = index_root(run.dir.root)
    versions = sorted(d.name for d in root.iterdir() if re.fullmatch(r"v\d{6}", d.name)) \
        if root.is_dir() else []
    if not versions:
        return None
    sec = Section("Index: recall vs queries/s")
    ids, vecs = read_vectors(run.dir.embeddings / "items.parquet")
    pos_of = {v: i for i, v in enumerate(ids.to_pylist())}
    q = run.query_vectors(max_queries)[:max_queries]
    q = q.reshape(-1, q.shape[-1]).numpy()  # every retrieval vector searches (multi-interest)
    rows, measured = [], []
    seen: set[str] = set()
    for version in reversed(versions):  # newest first; one row per distinct kind + params
        try:
            vi = load_index(run.dir.root, version)
        except ArtifactError as err:
            sec.notes.append(f"{version}: not loadable ({err})")
            continue
        m = vi.manifest
        key = json.dumps([m["kind"], m["params"]], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if m.get("weight_column"):
            sec.notes.append(f"{version} ({m['kind']}): business weight {m['weight_column']!r} "
                             "folded in; recall against the unweighted exact search is not comparable")
            continue
        alive = [r for r in vi.ids.to_pylist() if r is not None]
        if any(r not in pos_of for r in alive):
            sec.notes.append(f"{version} ({m['kind']}): holds items added after export; "
                             "no exact ground truth from embeddings/items.parquet")
            continue
        items = np.asarray(vecs)[[pos_of[r] for r in alive]].astype(np.float32)
        if m.get("normalized"):
            items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        k_big = min(100, len(items))
        _, truth_pos = exact_search(torch.from_numpy(q), torch.from_numpy(items), k_big)
        alive_arr = np.array(alive, dtype=object)
        truth = alive_arr[truth_pos.numpy()]
        t0 = time.perf_counter()
        _, lab = vi.search(q, k_big)
        qps = len(q) / max(time.perf_counter() - t0, 1e-9)
        found = np.array(vi.raw_ids(np.where(lab < 0, 0, lab)), dtype=object).reshape(lab.shape)
        found[lab < 0] = None
        rec = {k: _recall(found[:, :k], truth[:, :k]) for k in sorted({min(10, k_big), k_big})}
        measured.append((m["kind"], qps, rec, version))
        rows.append([version, m["kind"], json.dumps(m["params"]), f"{vi.count:,}", f"{qps:,.0f}"]
                    + [_fmt(rec[k]) for k in sorted(rec)])
    if measured:
        kset = sorted(measured[0][2])
        pts = {f"recall@{k}": sorted([(qps, rec[k], kind) for kind, qps, rec, _ in measured
                                      if k in rec]) for k in kset}
        plots.tradeoff(out / "index_recall_qps.png",
                       f"Index kinds built: recall@K vs queries/s ({len(q)} query vectors, one batch)",
                       "queries/s (log)", "recall@K vs exact search", pts, logx=True, join=False)
        sec.images.append("index_recall_qps.png")
        sec.tables.append(("Measured now on this machine", ["version", "kind", "params", "items",
                                                            "q/s"] + [f"recall@{k}" for k in kset], rows))
        sec.data["kinds"] = [{"kind": kind, "qps": qps, "version": v, **{f"recall@{k}": r for k, r in rec.items()}}
                             for kind, qps, rec, v in measured]
    return sec


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found.tolist(), truth.tolist())]
    return float(np.mean(hits)) if hits else float("nan")


# ---------------------------------------------------------------- the page
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if np.isnan(v) else (f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}")
    return str(v)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1000px;color:#222}h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}img{max-width:100%;border:1px solid #eee;margin:.4em 0}table{border-collapse:collapse;
margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-style:italic}
code{background:#f4f4f4;padding:0 .2em}"""


def render_html(title: str, subtitle: str, sections: list[Section], folder: Path) -> str:
    """One page; images inlined as data URIs (self-contained, offline)."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>{html.escape(subtitle)}</p>"]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        for img in sec.images:
            data = base64.b64encode((folder / img).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(img)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption><code>{html.escape(img)}</code></figcaption></figure>")
        for caption, head, rows in sec.tables:
            parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>"
                         + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
            for r in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
            parts.append("</table>")
        for note in sec.notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(run_dir: str | Path, max_requests: int = 2000, max_index_queries: int = 500,
                 max_searches: int = 400) -> Report:
    """Draw every section the run supports into ``RUN_DIR/report/`` (PNGs, ``index.html``,
    ``report.json``) and return what was drawn. ``max_requests``: evaluation requests re-ranked
    for the popularity plots (a seeded sample); ``max_index_queries``: queries timed per index."""
    plots.pyplot()  # fail before any work when matplotlib is missing
    run = _Run(Path(run_dir))
    sections: list[Section] = []

    def build(tmp: Path) -> None:
        steps: list[tuple[str, Callable[[], Section | None]]] = [
            ("Training", lambda: training_section(run, tmp)),
            ("Metrics at every K", lambda: metrics_section(run, tmp)),
            ("Coverage and popularity of retrieved items", lambda: popularity_section(run, tmp, max_requests)),
            ("MOBIUS", lambda: mobius_section(run, tmp, max_searches)),
            ("Index: recall vs queries/s", lambda: index_section(run, tmp, max_index_queries)),
        ]
        from twotower.progress import progress

        for title, make in progress(steps, desc="report", unit="section"):
            try:
                sec = make()
            except TwoTowerError as err:  # a section the run cannot support says why
                sec = Section(title, notes=[f"not drawn: {err}"])
            if sec is not None:
                sections.append(sec)
        cfg = run.cfg
        subtitle = (f"run {run.dir.root} — model {cfg.model.name}, objective {cfg.objective.name}, "
                    f"written {time.strftime('%Y-%m-%d %H:%M:%S')}")
        (tmp / "index.html").write_text(render_html(f"twotower report: {run.dir.root.name}", subtitle,
                                                    sections, tmp))
        (tmp / "report.json").write_text(json.dumps(
            {"run": str(run.dir.root), "plots": [i for s in sections for i in s.images],
             "sections": [{"title": s.title, "images": s.images, "notes": s.notes, "data": s.data}
                          for s in sections]}, indent=2, default=_json_default))

    path = atomic_write_dir(run.dir.root / REPORT_DIR, build)
    return Report(path, sections)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
