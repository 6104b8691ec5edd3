"""The ``ldm`` recipe: learn the ranker's order from the ranking-stage log.

Alibaba's LDM, as the seed documents describe it (MISSION.md section E): in the ranking-stage (funnel) log, the items shown for a request are positives and the items the
ranker auctioned for the same request but did not show are its negatives, so the two-tower's
ranker head learns the ranker's order (``objectives.consistency.request_softmax``). A second
head sharing the lower layers learns from clicks with in-batch random negatives (log-Q), since
the funnel only holds items the old system already retrieved (sample-selection bias). The model
is ``models.ldm_heads.TwoHeadModel`` over ``model`` (any plain two-tower); which head retrieves,
or their mix, is ``objective.ldm.retrieval`` and is written into the run's contract.

Each training step is a batch of clicked rows (the random head) plus ``requests_per_batch``
funnel requests with all their candidates (``batch.extra``, keys ``ldm_*``). A funnel row
takes its query features from the training log's row of the same request and its item features
from the item corpus; rows of held-out requests never train (the run's split applies).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from twotower.config import ObjectiveConfig, RunConfig
from twotower.data.readers import TableSource, filter_split
from twotower.errors import ConfigError, DataError
from twotower.features.dataset import EncodedLog, ItemCorpus, LogReader
from twotower.models.ldm_heads import TwoHeadConfig
from twotower.models import build_model
from twotower.objectives.consistency import request_softmax
from twotower.objectives.frequency import FrequencyEstimator
from twotower.objectives.losses import in_batch_softmax
from twotower.objectives.negatives import in_batch_candidates
from twotower.objectives.tasks import RetrievalTask
from twotower.recipes import Prepared, Recipe, register_recipe
from twotower.runs import RunData

QUERY, ITEM = "ldm_query:", "ldm_item:"


class FunnelRequests:
    """The training funnel, grouped by request: each request's query features (one row) and
    its candidate rows (corpus row of the item, shown flag), in CSR form."""

    def __init__(self, keys: pa.Array, query: dict[str, np.ndarray], indptr: np.ndarray,
                 item_rows: np.ndarray, shown: np.ndarray, counts: dict[str, int]):
        self.keys = keys  # raw request id of each request
        self.query, self.indptr, self.item_rows, self.shown = query, indptr, item_rows, shown
        self.counts = counts

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def rows_of(self, requests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate row positions, local request index 0..len-1 of each), vectorised."""
        starts, ends = self.indptr[requests], self.indptr[requests + 1]
        sizes = ends - starts
        local = np.repeat(np.arange(len(requests)), sizes)
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return np.repeat(starts, sizes) + offsets, local


def read_funnel(cfg: RunConfig, data: RunData, corpus: ItemCorpus) -> FunnelRequests:
    """The train split's funnel rows joined with query features (by request) and corpus items."""
    ldm = cfg.objective.ldm
    item_col = data.features.item_column
    src = TableSource(ldm.funnel)
    needed = {ldm.request: "objective.ldm.request", ldm.shown: "objective.ldm.shown",
              item_col: "data.item_id"}
    split_col = cfg.data.split_column
    if split_col:
        needed[split_col] = "data.split_column"
    holdout = data.reader.holdout()
    if holdout is not None:
        needed[holdout.column] = "data.holdout.group_by"
    src.require_fields(needed)
    chunks = []
    start = 0
    for chunk in src.iter_chunks(list(needed), cfg.data.chunk_rows):
        n = chunk.num_rows
        if split_col:
            chunk = filter_split(chunk, split_col, "train", src.path)
        if holdout is not None:
            chunk = chunk.filter(holdout.mask(chunk, "train", start))
        start += n
        chunks.append(chunk.select([ldm.request, ldm.shown, item_col]))
    if not chunks:
        raise DataError(f"{src.path}: the funnel log has no rows")
    table = pa.concat_tables(chunks)
    shown_col = table[ldm.shown]
    if not (pa.types.is_boolean(shown_col.type) or pa.types.is_integer(shown_col.type)):
        raise DataError(f"{src.path}: objective.ldm.shown column {ldm.shown!r} has type "
                        f"{shown_col.type}, expected bool or 0/1")
    shown = np.asarray(shown_col.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False))
    request = table[ldm.request].combine_chunks()
    item_rows = corpus.positions(table[item_col])
    counts = {"funnel_rows": int(table.num_rows), "item_not_in_corpus": int((item_rows < 0).sum())}

    # query features: the first training-log row of each request (all impressions, not only clicks)
    reader = LogReader(cfg.data, data.features, extra_columns={ldm.request: "objective.ldm.request"})
    log = reader.load("train", positives_only=False)
    log_req = pa.array(log.raw[ldm.request])
    uniq_log, first = np.unique(np.asarray(pc.index_in(log_req, value_set=pc.unique(log_req))
                                           .to_numpy(zero_copy_only=False)), return_index=True)
    log_keys = pc.unique(log_req).take(pa.array(uniq_log))
    req_in_log = np.asarray(pc.index_in(request.cast(log_req.type), value_set=log_keys)
                            .fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    counts["request_not_in_train_log"] = int((req_in_log < 0).sum())
    keep = (item_rows >= 0) & (req_in_log >= 0)
    req_in_log, item_rows, shown = req_in_log[keep], item_rows[keep], shown[keep]
    # a request trains only with a shown row and an auctioned-but-not-shown row
    n_req = len(log_keys)
    has_pos = np.bincount(req_in_log, weights=shown, minlength=n_req) > 0
    has_neg = np.bincount(req_in_log, weights=~shown, minlength=n_req) > 0
    usable = (has_pos & has_neg)[req_in_log]
    req_in_log, item_rows, shown = req_in_log[usable], item_rows[usable], shown[usable]
    if len(req_in_log) == 0:
        raise DataError(f"{src.path}: no training request of the funnel log has both a shown and an "
                        f"auctioned-but-not-shown candidate (columns {ldm.request!r}, {ldm.shown!r})")
    order = np.argsort(req_in_log, kind="stable")
    req_in_log, item_rows, shown = req_in_log[order], item_rows[order], shown[order]
    requests, dense = np.unique(req_in_log, return_inverse=True)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dense))])
    query = {k: v[first[requests]] for k, v in log.query.items()}
    counts.update({"requests": int(len(requests)), "rows": int(len(item_rows)),
                   "shown_rows": int(shown.sum())})
    return FunnelRequests(log_keys.take(pa.array(requests)), query, indptr, item_rows, shown, counts)


class FunnelBatches:
    """Clicked-row batches (an ``EncodedLog``'s, same order) each carrying the next
    ``requests_per_batch`` funnel requests (a seeded permutation per epoch, cycled)."""

    def __init__(self, clicks: EncodedLog, funnel: FunnelRequests, corpus: ItemCorpus, per_batch: int):
        self.clicks, self.funnel, self.corpus, self.per_batch = clicks, funnel, corpus, per_batch

    def __len__(self) -> int:
        return len(self.clicks)

    def num_batches(self, batch_size: int) -> int:
        return self.clicks.num_batches(batch_size)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, skip: int = 0):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.clicks))
        requests = np.random.default_rng([seed, epoch, 1]).permutation(len(self.funnel))
        f = self.funnel
        for b in range(skip, self.clicks.num_batches(batch_size)):
            batch = self.clicks.batch(order[b * batch_size:(b + 1) * batch_size])
            pick = requests[(b * self.per_batch + np.arange(self.per_batch)) % len(requests)]
            rows, local = f.rows_of(pick)
            for k, v in f.query.items():
                batch.extra[QUERY + k] = torch.from_numpy(v[pick])
            for k, v in self.corpus.features.items():
                batch.extra[ITEM + k] = torch.from_numpy(v[f.item_rows[rows]])
            batch.extra["ldm_request"] = torch.from_numpy(local)
            batch.extra["ldm_shown"] = torch.from_numpy(f.shown[rows])
            yield batch


class LDMTask(RetrievalTask):
    """Ranker head: request softmax over the funnel; random head: log-Q in-batch softmax."""

    def __init__(self, cfg: ObjectiveConfig, item_id: str = "item_id", seed: int = 0):
        super().__init__(cfg, None, item_id, seed)
        self.ldm = cfg.ldm
        self.estimator = (FrequencyEstimator(cfg.estimator.num_buckets, cfg.estimator.num_hashes,
                                             cfg.estimator.alpha) if cfg.logq_correction else None)

    def objective_loss(self, model, batch, step, q, i):
        if self.estimator is not None and self.training:  # eval mode: a read-only lookup
            self.estimator.update(batch.item_ids, step)
        ids, log_q = in_batch_candidates(batch.item_ids, self.estimator)
        random = in_batch_softmax(model.head_logits(q, i, "random") / self.temperature, ids, log_q,
                                  batch.weight, remove_hits=self.cfg.remove_accidental_hits)
        if "ldm_request" not in batch.extra:  # a validation batch: clicks only, no funnel requests
            return self.ldm.random_weight * random, {"random": float(random.detach())}
        fq = model.encode_query({k[len(QUERY):]: v for k, v in batch.extra.items() if k.startswith(QUERY)})
        fi = model.encode_item({k[len(ITEM):]: v for k, v in batch.extra.items() if k.startswith(ITEM)})
        request = batch.extra["ldm_request"]
        scores = model.head_pair_logits(fq[request], fi, "ranker") / self.temperature  # [M]
        ranker = request_softmax(scores, request, batch.extra["ldm_shown"])
        return ranker + self.ldm.random_weight * random, {"ranker": float(ranker.detach()),
                                                          "random": float(random.detach())}


@register_recipe("ldm")
class LDMRecipe(Recipe):
    def check(self, cfg: RunConfig) -> None:
        ldm = cfg.objective.ldm
        if ldm.funnel is None:
            raise ConfigError("objective ldm learns from the ranking-stage log: set objective.ldm.funnel "
                              "(e.g. the simulator's funnel.parquet: `twotower simulate --funnel-log`)")
        if not ldm.funnel.exists():
            raise ConfigError(f"objective.ldm.funnel: {ldm.funnel} does not exist")
        holdout = cfg.data.holdout
        if holdout is not None and holdout.group_by != ldm.request:
            raise ConfigError("objective ldm: data.holdout must hold out whole requests "
                              f"(data.holdout.group_by: {ldm.request}) so that held-out requests' "
                              "funnel rows never train; or use data.split_column")
        if cfg.data.split_column is None and holdout is None and (cfg.data.valid or cfg.data.test):
            raise ConfigError("objective ldm: with separate valid/test files the funnel log cannot "
                              "be split; use data.split_column or data.holdout.group_by")
        if cfg.objective.in_batch_block is not None:
            raise ConfigError("objective.in_batch_block applies to in_batch_softmax, not ldm")
        if cfg.model.name == "ldm_heads":
            raise ConfigError("objective ldm builds its two heads itself: set model.name to the "
                              "base model (e.g. dssm)")
        from twotower import registry

        entry = registry.model_entry(cfg.model.name)
        if entry is not None and (not getattr(entry[0], "plain_similarity", False)
                                  or getattr(entry[0], "scores_are_logits", False)):
            raise ConfigError(f"objective ldm: model {cfg.model.name!r} does not score by the first "
                              "vectors' dot product; its two heads need a plain two-tower model "
                              "(dssm, senet, resnet, ...)")

    def columns(self, cfg: RunConfig) -> dict[str, str]:
        return {cfg.objective.ldm.request: "objective.ldm.request"}

    def build_model(self, cfg: RunConfig, schema):
        ldm = cfg.objective.ldm
        shared = {k: getattr(cfg.model, k) for k in ("embedding_dim", "hidden", "output_dim", "dropout")}
        own = {k: v for k, v in cfg.model.model_dump().items() if k not in shared and k != "name"}
        heads = TwoHeadConfig(**shared, base=cfg.model.name, base_fields=own,
                              retrieval=ldm.retrieval, mix=ldm.mix)
        return build_model(heads, schema)

    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        if stream:
            raise ConfigError("objective ldm joins the funnel log with the training log in memory: "
                              "it cannot stream")
        funnel = read_funnel(cfg, data, corpus)
        clicks = data.train_source(True, False)
        source = FunnelBatches(clicks, funnel, corpus, cfg.objective.ldm.requests_per_batch)
        task = LDMTask(cfg.objective, data.features.item_id, cfg.train.seed)
        return Prepared(task, source, source.num_batches(cfg.train.batch_size), {"funnel": funnel})

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        ldm = cfg.objective.ldm
        return {"ldm": {"funnel": prepared.state["funnel"].counts, "retrieval": ldm.retrieval,
                        "mix": ldm.mix, "random_weight": ldm.random_weight}}
