"""The contract every registered model honours (parametrised over ``registered_models()``).

A new model file that registers itself is picked up here automatically: shapes [B, V, D], gradients
into both towers, a safetensors save/load round trip, retrieval vectors that rank like the model's
own scores, and a few Trainer steps with each objective on a tiny log that has categorical,
sequence, text and dense features on both sides.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.config import ObjectiveConfig, TrainConfig
from twotower.index.exact import exact_search
from twotower.models import build_model, registered_models
from twotower.objectives.tasks import build_task
from twotower.train.checkpoint import load_weights, save_weights
from twotower.train.trainer import Trainer

from zoo_data import item_table, small_model_config, tiny_log, tiny_schema

MODELS = registered_models()


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(small_model_config(name), tiny_schema())


def batch_of(log, n=16):
    return log.batch(np.arange(n))


def corpus_features():
    return {k: torch.from_numpy(v) for k, v in item_table().items()}


@pytest.mark.parametrize("name", MODELS)
def test_shapes(name):
    model = make(name).eval()
    b = batch_of(tiny_log(), 16)
    q = model.encode_query(b.query)
    i = model.encode_item(corpus_features())
    assert q.dim() == 3 and q.shape[0] == 16
    assert i.dim() == 3 and i.shape[0] == 30
    assert model.logits(q, i).shape == (16, 30)
    i_b = model.encode_item(b.item)
    assert model.pair_logits(q, i_b).shape == (16,)
    rq, ri = model.retrieval_query(q), model.retrieval_item(i)
    assert rq.dim() == 3 and rq.shape[0] == 16 and ri.shape[0] == 30
    assert rq.shape[-1] == ri.shape[-1] == model.contract()["dim"]
    if model.contract()["normalized"]:
        torch.testing.assert_close(ri.norm(dim=-1), torch.ones(30), atol=1e-4, rtol=0)
    assert torch.isfinite(q).all() and torch.isfinite(i).all()


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_both_towers(name):
    model = make(name)
    task = build_task(ObjectiveConfig(logq_correction=False), item_id="item_id")
    loss, _ = task.loss(model, batch_of(tiny_log(), 32), 0)
    loss.backward()
    tables = model.embedding.tables
    for table in ("user_id", "query_text", "tags", "title"):  # query-only / item-only tables
        g = tables[table].weight.grad
        assert g is not None and g.abs().sum() > 0, f"no gradient into {table}"
    for dense in ("user_score", "price"):
        g = model.embedding.dense[dense].weight.grad
        assert g is not None and g.abs().sum() > 0, f"no gradient into {dense}"


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tmp_path):
    model = make(name, seed=0).eval()
    path = save_weights(model, tmp_path / "m.safetensors")
    other = make(name, seed=1).eval()
    load_weights(other, path)
    b = batch_of(tiny_log(), 8)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_query(b.query), other.encode_query(b.query))
        torch.testing.assert_close(model.encode_item(b.item), other.encode_item(b.item))


@pytest.mark.parametrize("name", MODELS)
def test_retrieval_vectors_rank_like_the_model(name):
    model = make(name).eval()
    with torch.no_grad():
        b = batch_of(tiny_log(), 12)
        q, i = model.encode_query(b.query), model.encode_item(corpus_features())
        rq, ri = model.retrieval_query(q), model.retrieval_item(i)
        _, pos = exact_search(rq, ri, k=ri.shape[0])
        if rq.shape[1] == 1:  # one query vector: the training score itself must rank the same
            scores = model.logits(q, i)
        else:  # several query vectors: the contract's max over them
            scores = torch.einsum("bvd,nd->bvn", rq, ri).amax(1)
    ranked = scores.gather(1, pos)  # the model's scores in exact_search's order
    assert (ranked[:, :-1] - ranked[:, 1:] >= -1e-4 * scores.abs().max()).all()


@pytest.mark.parametrize("objective", ["in_batch_softmax", "mixed_negatives", "pointwise_bce"])
@pytest.mark.parametrize("name", MODELS)
def test_trains_with_every_objective(name, objective):
    model = make(name)
    cfg = ObjectiveConfig(name=objective, uniform_negatives=8 if objective == "mixed_negatives" else 0)
    task = build_task(cfg, corpus={k: v for k, v in item_table().items()}, item_id="item_id")
    log = tiny_log(256, negatives=objective == "pointwise_bce")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, task, TrainConfig(epochs=2, batch_size=32, lr=0.01, progress=False,
                                               device="cpu", early_stopping_patience=None))
    result = trainer.fit(log)
    assert result.steps == 16
    assert all(np.isfinite(r["train_loss"]) for r in result.history if "train_loss" in r)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training changed no weight"
