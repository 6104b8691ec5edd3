"""Defining behaviour of the interaction models: SENet, ResNet, Que2Search, DAT, parallel towers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.config import ObjectiveConfig, TrainConfig
from twotower.models import build_model
from twotower.objectives.dat import dat_auxiliary_loss
from twotower.objectives.losses import category_alignment_loss, mimic_loss
from twotower.objectives.tasks import build_task
from twotower.towers.cin import CIN
from twotower.towers.cross import CrossNetwork
from twotower.towers.fm import FMTower
from twotower.towers.residual import ResidualMLP
from twotower.train.trainer import Trainer
from twotower.types import Side

from zoo_data import small_model_config, tiny_log, tiny_schema


def make(name, **extra):
    torch.manual_seed(0)
    return build_model(small_model_config(name, **extra), tiny_schema())


def batch(n=32, negatives=False):
    return tiny_log(256, negatives=negatives).batch(np.arange(n))


def fit(model, steps_epochs=2, objective="in_batch_softmax"):
    task = build_task(ObjectiveConfig(name=objective), item_id="item_id")
    Trainer(model, task, TrainConfig(epochs=steps_epochs, batch_size=32, lr=0.01, progress=False,
                                     device="cpu", early_stopping_patience=None)).fit(
        tiny_log(256, negatives=objective == "pointwise_bce"))
    return model


# ------------------------------------------------------------------ SENet
def test_senet_sigmoid_weights_shape_range_and_depend_on_input():
    model = make("senet").eval()
    b = batch()
    wq = model.field_weights(b.query, Side.QUERY)
    wi = model.field_weights(b.item, "item")
    assert wq.shape == (32, 4) and wi.shape == (32, 4)
    assert ((wq > 0) & (wq < 1)).all() and ((wi > 0) & (wi < 1)).all()
    assert wq.std(0).max() > 1e-4, "weights must change with the input"
    assert wi.std(0).max() > 1e-4


def test_senet_softmax_weights_sum_to_field_count():
    model = make("senet", gate="softmax").eval()
    w = model.field_weights(batch().query, Side.QUERY)
    torch.testing.assert_close(w.sum(-1), torch.full((32,), 4.0))
    assert (w > 0).all()


def test_senet_reweighting_changes_the_tower_input():
    model = make("senet").eval()
    b = batch(8)
    fields = model.embedding(b.query, model.query_fields)
    reweighted, w = model.query_se(fields)
    for j, (f, r) in enumerate(zip(fields, reweighted)):
        torch.testing.assert_close(r, f * w[:, j:j + 1])


def test_senet_field_table_cli(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from twotower.cli import app
    from twotower.eval.fields import mean_field_weights
    from twotower.pipeline import train_run

    cfg = tiny_config(tmp_path / "senet", train={"epochs": 1}, model={"name": "senet"})
    train_run(cfg, overwrite=True)
    weights = mean_field_weights(tmp_path / "senet")
    assert set(weights["query"]) == {"user_id", "query_text"}
    assert set(weights["item"]) == {"ad_id", "ad_title", "ad_category", "advertiser_id"}
    assert all(0 < w < 1 for side in weights.values() for w in side.values())
    out = CliRunner().invoke(app, ["fields", str(tmp_path / "senet")])
    assert out.exit_code == 0, out.output
    assert "ad_category" in out.output and "query_text" in out.output
    bad = CliRunner().invoke(app, ["fields", str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "not a run folder" in bad.output


# ------------------------------------------------------------------ ResNet
@pytest.mark.parametrize("depth", [1, 3])
def test_resnet_depth_is_configurable(depth):
    model = make("resnet", depth=depth)
    assert len(model.query_tower.blocks) == depth and len(model.item_tower.blocks) == depth


def test_resnet_skip_changes_output_and_carries_gradient():
    torch.manual_seed(0)
    res = ResidualMLP(12, 16, 2, 8)
    plain = ResidualMLP(12, 16, 2, 8, skip=False)
    plain.load_state_dict(res.state_dict())
    x = torch.randn(5, 12, requires_grad=True)
    assert not torch.allclose(res(x), plain(x))
    # kill every residual branch: only the skip path can carry the input to the top
    for net in (res, plain):
        for block in net.blocks:
            torch.nn.init.zeros_(block.fc2.weight)
            torch.nn.init.zeros_(block.fc2.bias)
    (g_res,) = torch.autograd.grad(res(x).sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).sum(), x)
    assert g_res.abs().sum() > 0
    assert g_plain.abs().sum() == 0


# ------------------------------------------------------------------ Que2Search
def test_que2search_channel_attention_sums_to_one_per_example():
    model = make("que2search").eval()
    b = batch()
    for side, feats, n in ((Side.QUERY, b.query, 4), (Side.ITEM, b.item, 4)):
        w = model.channel_weights(feats, side)
        assert w.shape == (32, n)
        torch.testing.assert_close(w.sum(-1), torch.ones(32))
        assert (w >= 0).all()
        assert w.std(0).max() > 1e-5, "attention must depend on the example"


def test_que2search_fused_vector_is_attention_weighted_channels():
    model = make("que2search").eval()
    fields = model.embedding(batch(4).query, model.query_fields)
    h = torch.stack([enc(f) for enc, f in zip(model.query_tower.channels, fields)], dim=1)
    fused, w = model.query_tower.attention(h)
    torch.testing.assert_close(fused, (w[..., None] * h).sum(1))


# ------------------------------------------------------------------ DAT
def test_dat_mimic_loss_sends_no_gradient_into_the_towers():
    model = make("dat")
    b = batch()
    q, i = model.encode_query(b.query), model.encode_item(b.item)
    aux, logs = dat_auxiliary_loss(model, q, i, b)
    assert aux > 0 and "mimic" in logs
    aux.backward()
    for tower in (model.query_tower, model.item_tower, model.embedding):
        for p in tower.parameters():
            assert p.grad is None or p.grad.abs().sum() == 0
    assert model.query_aug.weight.grad.abs().sum() > 0
    assert model.item_aug.weight.grad.abs().sum() > 0


def test_dat_mimic_loss_is_on_positives_only():
    a = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4)
    pos = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    full = mimic_loss(a, t, pos)
    torch.testing.assert_close(full, (a[pos] - t[pos]).pow(2).sum(-1).mean())
    t2 = t.clone()
    t2[~pos] += 100.0  # negatives' targets do not matter
    torch.testing.assert_close(mimic_loss(a, t2, pos), full)
    assert mimic_loss(a, t, torch.zeros(6, dtype=torch.bool)) == 0
    # in the model: the label decides which rows mimic
    model = make("dat")
    b = batch(negatives=True)
    q, i = model.encode_query(b.query), model.encode_item(b.item)
    b.label = torch.zeros_like(b.label)
    aux, _ = dat_auxiliary_loss(model, q, i, b)
    assert aux == 0


def test_dat_task_adds_the_auxiliary_loss():
    model = make("dat")
    task = build_task(ObjectiveConfig(logq_correction=False), item_id="item_id")
    b = batch()
    loss, logs = task.loss(model, b, 0)
    q, i = model.encode_query(b.query), model.encode_item(b.item)
    base, _ = task.objective_loss(model, b, 0, q, i)
    aux, _ = dat_auxiliary_loss(model, q, i, b)
    torch.testing.assert_close(loss, base + aux)
    assert "mimic" in logs


def test_category_alignment_loss():
    torch.manual_seed(0)
    major = torch.randn(40, 4)
    same_cov = torch.randn(20, 4)
    cat = torch.tensor([0] * 40 + [1] * 20)
    # a minor category with a much larger spread costs more than one with the same spread
    small = category_alignment_loss(torch.cat([major, same_cov]), cat)
    big = category_alignment_loss(torch.cat([major, same_cov * 5]), cat)
    assert 0 <= small < big
    x = torch.cat([major, same_cov * 5]).requires_grad_()
    category_alignment_loss(x, cat).backward()
    assert x.grad.abs().sum() > 0
    assert category_alignment_loss(x, torch.zeros(60, dtype=torch.long)) == 0  # one category
    # translation does not change a covariance
    shifted = torch.cat([major, same_cov * 5 + 3.0])
    torch.testing.assert_close(category_alignment_loss(shifted, cat), big, rtol=1e-4, atol=1e-5)


def test_dat_category_alignment_option_trains(tiny_config, tmp_path):
    from twotower.pipeline import train_run

    cfg = tiny_config(tmp_path / "dat", train={"epochs": 1},
                      model={"name": "dat", "category_field": "ad_category"})
    s = train_run(cfg, overwrite=True)
    assert np.isfinite(s.metrics["recall@20"])
    logs = [r for r in s.train.history if "category_alignment" in r]
    assert logs or s.train.steps < 50  # logged every 50 steps


def test_dat_rejects_a_bad_category_field():
    from twotower.errors import ConfigError

    with pytest.raises(ConfigError, match="category_field"):
        make("dat", category_field="price")


# ------------------------------------------------------------------ Parallel
def test_parallel_uses_every_tower_type():
    model = make("parallel")
    assert list(model.query_side.towers) == ["mlp", "dcn", "fm", "cin"]
    task = build_task(ObjectiveConfig(logq_correction=False), item_id="item_id")
    loss, _ = task.loss(model, batch(), 0)
    loss.backward()
    for side in (model.query_side, model.item_side):
        for kind, tower in side.towers.items():
            grads = [p.grad for p in tower.parameters()]  # the pure FM tower has none
            assert all(g is not None for g in grads), kind
            assert not grads or sum(g.abs().sum() for g in grads) > 0, f"{kind} gets no gradient"
    assert model.fusion.weight.grad.abs().min() > 0  # every tower's score reaches the loss
    # the FM part of the query vector is the normalised sum of the field vectors
    b = batch(4)
    stacked = model.query_side.common(model.embedding(b.query, model.query_fields))
    fm_part = model.encode_query(b.query)[:, 0].reshape(4, 4, -1)[:, 2]
    s = stacked.sum(1)
    torch.testing.assert_close(fm_part, s / s.norm(dim=-1, keepdim=True))


def test_parallel_fusion_weights_learn():
    model = make("parallel")
    before = model.fusion.weight.detach().clone()
    fit(model)
    after = model.fusion.weight.detach()
    assert not torch.allclose(before, after)
    assert (after - before).abs().max() > 1e-3


def test_parallel_retrieval_score_is_the_fused_score():
    model = make("parallel").eval()
    b = batch(6)
    with torch.no_grad():
        model.fusion.weight.copy_(torch.tensor([0.7, -0.2, 0.4, 1.3]))
        q, i = model.encode_query(b.query), model.encode_item(b.item)
        per_tower = model.tower_scores(q, i)  # [B, N, K] cosines
        assert per_tower.abs().max() <= 1 + 1e-5
        fused = (per_tower * model.fusion.weight).sum(-1)
        served = model.retrieval_query(q)[:, 0] @ model.retrieval_item(i).T
        torch.testing.assert_close(served, fused)
        torch.testing.assert_close(model.logits(q, i),
                                   (fused + model.fusion.bias))


def test_interaction_blocks():
    torch.manual_seed(0)
    u, v = torch.randn(3, 5, 4), torch.randn(3, 6, 4)
    fm = FMTower(4)
    pairwise = torch.einsum("bfe,bge->b", u, v)  # sum of all cross-side <v_f, v_g>
    torch.testing.assert_close((fm(u) * fm(v)).sum(-1), pairwise)
    cross = CrossNetwork(7, 3)
    with torch.no_grad():
        cross.w.zero_()
    x = torch.randn(2, 7)
    torch.testing.assert_close(cross(x), x)  # w = b = 0: identity
    cin = CIN(5, [3, 2], 8)
    assert cin(u).shape == (3, 8)


@pytest.mark.parametrize("name", ["senet", "resnet", "que2search", "parallel"])
def test_trains_end_to_end_on_the_simulator(name, tiny_config, tmp_path):
    from twotower.pipeline import train_run

    s = train_run(tiny_config(tmp_path / name, train={"epochs": 1}, model={"name": name}),
                  overwrite=True)
    assert np.isfinite(s.metrics["recall@20"]) and s.metrics["recall@20"] > 0
