"""Simulator evaluation of MOBIUS (BENCHMARK.md section 2) and the paper's Table 1 measures.

For held-out searches (user, query) every ad is scored; with the simulator's truth:
relevant@K (share of retrieved ads with relevance >= tau; bad-case rate = 1 - that), CPM@K (mean
over the K retrieved ads of true CTR x bid, irrelevant ads earning 0 since they are never shown) and
ideal-recall@K (recall of the top-K relevant ads by true CTR x bid).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from twotower.data.simulator import SimulatorTruth
from twotower.errors import ConfigError
from twotower.features.dataset import as_tensors
from twotower.index.export import encode_queries, read_vectors
from twotower.index.weights import fold_weights, lookup_weights
from twotower.runs import load_run
from twotower.types import Side


class HeldOut:
    """Held-out searches of a simulated log (first row of each test search) and the truth."""

    def __init__(self, data_dir: str | Path, max_searches: int = 600, split: str = "test"):
        self.data_dir = Path(data_dir)
        self.truth = SimulatorTruth.load(data_dir)
        imp = pq.read_table(self.data_dir / "impressions.parquet", filters=[("split", "=", split)])
        self.impressions = imp
        sid = imp["search_id"].to_numpy()
        _, first = np.unique(sid, return_index=True)
        first = np.sort(first)[:max_searches]
        self.searches = imp.take(first)
        self.users = self.searches["user_id"].to_numpy()
        self.queries = self.searches["query_id"].to_numpy()
        ads = pq.read_table(self.data_dir / "ads.parquet")
        self.ad_ids = ads["ad_id"].to_numpy()
        self.ad_titles = ads["ad_title"].to_pylist()
        self.bid = self.truth.bid(self.ad_ids)
        self.relevance = self.truth.relevance_matrix(self.queries, self.ad_ids)  # [R, A]
        self.relevant = self.relevance >= self.truth.relevance_threshold
        ctr = self.truth.ctr_matrix(self.users, self.queries, self.ad_ids)
        self.cpm = ctr * self.bid[None, :] * self.relevant  # [R, A], irrelevant earn nothing
        self._ideal_order: np.ndarray | None = None
        self._ideal_k = 0

    def ideal_order(self, k: int) -> np.ndarray:
        """[R, k] the top-k relevant ads of each search by true CTR x bid, computed once per k
        (a full sort of [R, A]; every contender's metrics reuse it)."""
        if self._ideal_order is None or self._ideal_k < k:
            v = np.where(self.relevant, self.cpm, -1.0)
            part = np.argpartition(-v, min(k, v.shape[1] - 1), axis=1)[:, :k]
            rows = np.arange(len(v))[:, None]
            self._ideal_order = part[rows, np.argsort(-v[rows, part], axis=1, kind="stable")]
            self._ideal_k = k
        return self._ideal_order[:, :k]

    def metrics(self, scores: np.ndarray, ks: list[int]) -> dict[str, float]:
        """``scores`` [R, A] (columns in ``ad_ids`` order) -> relevant@K, CPM@K, ideal-recall@K."""
        out: dict[str, float] = {}
        s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        kmax = max(ks)
        top = s.topk(kmax, dim=1).indices.numpy()
        ideal_order = self.ideal_order(kmax)
        n_rel = self.relevant.sum(1)
        rows = np.arange(len(s))[:, None]
        for k in ks:
            t = top[:, :k]
            out[f"relevant@{k}"] = float(self.relevant[rows, t].mean())
            out[f"cpm@{k}"] = float(self.cpm[rows, t].mean())
            size = np.minimum(n_rel, k)
            ideal = np.zeros_like(self.relevant)
            ideal[rows, ideal_order[:, :k]] = True
            ideal &= self.relevant
            hit = ideal[rows, t].sum(1)
            ok = size > 0
            out[f"ideal_recall@{k}"] = float((hit[ok] / size[ok]).mean()) if ok.any() else float("nan")
        return out


def run_scores(run_dir: str | Path, held: HeldOut, brw: bool = False) -> np.ndarray:
    """[R, A] retrieval scores of a trained run over its exported item vectors; with ``brw``,
    the vectors the index serves for its contract's business weight (``index.weights``): the
    normalised query times normalize(item) * w, i.e. cos(q, a) * w."""
    run = load_run(run_dir)
    ids, vecs = read_vectors(run.dir.embeddings / "items.parquet")
    q = encode_queries(run.model, run.features.encode(held.searches, Side.QUERY, count=False))  # [R, V, D]
    if brw:
        column = run.contract.get("brw_weight")
        if not column:
            raise ConfigError(f"{run.root}: the run's contract names no business weight (brw_weight)")
        src = run.data.item_table_source()
        w = lookup_weights(src.read([run.contract["item_id"], column]), run.contract["item_id"],
                           column, ids, str(src.path))
        vecs = fold_weights(vecs, w, normalize=True)
        q = torch.nn.functional.normalize(q.float(), dim=-1)
    scores = (q.float() @ torch.from_numpy(np.array(vecs)).T).amax(1).numpy()  # [R, N]
    return _align(scores, ids.to_numpy(), held.ad_ids)


def _align(scores: np.ndarray, ids: np.ndarray, ad_ids: np.ndarray) -> np.ndarray:
    """Columns reordered to ``ad_ids``; ads missing from the corpus get -inf."""
    out = np.full((scores.shape[0], len(ad_ids)), -np.inf)
    pos = {int(a): j for j, a in enumerate(ad_ids)}
    cols = np.array([pos[int(a)] for a in ids])
    out[:, cols] = scores
    return out


def teacher_scores(teacher, held: HeldOut, seed: int = 0) -> np.ndarray:
    """Relevance-only retriever: the teacher's score of every (held-out query, ad); ties broken
    at random (seeded)."""
    texts = held.searches["query_text"].to_pylist()
    teacher.prepare(texts, held.ad_titles)
    s = teacher.score(torch.arange(len(texts)), torch.arange(len(held.ad_titles))).numpy()
    return s + 1e-6 * np.random.default_rng(seed).random(s.shape)


def click_auc_and_top_relevance(run_dir: str | Path, held: HeldOut, top_share: float = 0.01
                                ) -> dict[str, float]:
    """Table 1 of the paper: click AUC on held-out impressions (p(click) from the 3-way softmax)
    and mean true relevance of the top ``top_share`` pairs by predicted CTR over the cross join of
    held-out searches and all ads."""
    run = load_run(run_dir)
    features, model = run.features, run.model
    temperature = run.config.objective.temperature
    imp = held.impressions
    with torch.no_grad():
        enc_q = as_tensors(features.encode(imp, Side.QUERY, count=False))
        enc_i = as_tensors(features.encode(imp, Side.ITEM, count=False))
        logits = model.class_logits(model.encode_query(enc_q), model.encode_item(enc_i)) / temperature
        p = logits.softmax(-1)[:, 0]
        a = roc_auc(p.numpy(), imp["click"].to_numpy())
        sq = as_tensors(features.encode(held.searches, Side.QUERY, count=False))
        ads = pq.read_table(held.data_dir / "ads.parquet")
        si = as_tensors(features.encode(ads, Side.ITEM, count=False))
        ctr = model.click_probability(model.encode_query(sq), model.encode_item(si),
                                      temperature).numpy()  # [R, A]
    flat = ctr.ravel()
    n_top = max(1, int(top_share * flat.size))
    top = np.argpartition(-flat, n_top - 1)[:n_top]
    return {"auc": a, "top_relevance": float(held.relevance.ravel()[top].mean())}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic (ties get average ranks)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    # average ranks over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def run_vectors(run_dir: str | Path, held: HeldOut) -> dict:
    """A trained run's vectors over the held-out searches and every ad (in ``held.ad_ids`` order):
    ``q`` [R, V, D] and ``items`` [A, V, D] (all class vectors), ``retrieval`` [R, A] (the scores
    of the vectors it serves), the objective's temperature and the retrieval kind. BRW variants
    (tempered, two-stage) are computed from these without encoding again."""
    run = load_run(run_dir)
    features, model = run.features, run.model
    q = model.encode_query(as_tensors(features.encode(held.searches, Side.QUERY, count=False)))
    ads = pq.read_table(held.data_dir / "ads.parquet")
    items = torch.cat([model.encode_item(as_tensors(features.encode(ads.slice(s, 8192), Side.ITEM,
                                                                    count=False))).float()
                       for s in range(0, ads.num_rows, 8192)])
    retrieval = (model.retrieval_query(q.float()) @ model.retrieval_item(items).T).amax(1)  # [R, A]
    return {"q": q.float(), "items": items, "retrieval": retrieval,
            "temperature": float(run.config.objective.temperature),
            "kind": getattr(model.cfg, "retrieval", None) or "click", "vectors": q.shape[1]}
