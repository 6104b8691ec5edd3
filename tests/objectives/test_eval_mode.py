"""Every task's eval mode is side-effect free (what the Trainer's validation loss relies on): the
same loss twice, and no state changed — not the frequency estimator, not a sampler's stream, not
MOBIUS's mining totals. Train mode on the same batch does change that state, so the checks can fail."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_sections
from twotower.features.feature_set import FeatureSet, feature_schema
from twotower.run import RunDir
from twotower.objectives.ssl import SelfSupervisedTask
from twotower.pipeline import recipe_for  # (importing the pipeline registers every recipe)
from twotower.runs import RunData

OBJECTIVES = {
    "in_batch_softmax": {"name": "in_batch_softmax"},
    "mixed_negatives": {"name": "mixed_negatives", "uniform_negatives": 16},
    "pointwise_bce": {"name": "pointwise_bce"},
    "full_softmax": {"name": "full_softmax"},
    "hard_negatives": {"name": "hard_negatives",
                       "hard_negatives": {"window": [5, 40], "warmup_epochs": 0, "online": 2,
                                          "easy_negatives": 8}},
    "ssl": {"name": "in_batch_softmax", "ssl": {"masking": "rfm", "batch_size": 16}},
}

STATELESS = {"pointwise_bce", "full_softmax"}


def test_every_registered_objective_is_held_to_it():
    from twotower.objectives.tasks import TASKS
    from twotower.recipes import RECIPES

    # mobius, dmtl, ldm: their own tests below (they need their own data)
    assert set(TASKS) | set(RECIPES) <= set(OBJECTIVES) | {"mobius", "dmtl", "ldm"}


def test_dmtl_in_eval_mode_changes_nothing(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "dmtl", objective={"name": "dmtl", "dmtl": {
        "engagement": "dwell", "length_column": "page_length", "candidates": 8, "teacher_epochs": 1,
        "teacher_batch_size": 256, "teacher_hidden": [16], "teacher_cross_dim": 8}})
    check_eval_mode_is_side_effect_free(*prepared_task(cfg), step=1)


def test_ldm_in_eval_mode_changes_nothing_and_takes_a_plain_batch(funnel_sim_dir, tmp_path):
    from twotower.config import merge
    from twotower.presets import simulator_config

    sections = merge(tiny_sections(epochs=1), {"objective": {"name": "ldm", "ldm": {
        "funnel": str(funnel_sim_dir / "funnel.parquet"), "requests_per_batch": 8}}})
    cfg = simulator_config(funnel_sim_dir, tmp_path / "ldm", **sections)
    model, task, batch = prepared_task(cfg)
    check_eval_mode_is_side_effect_free(model, task, batch, step=1)
    plain = type(batch)(batch.query, batch.item, batch.item_ids, batch.label, batch.weight)
    task.eval()
    with torch.no_grad():  # a validation batch has no funnel requests: the random head's loss
        loss, logs = task.loss(model, plain, 1)
    assert torch.isfinite(loss) and set(logs) == {"random"}


def prepared_task(cfg):
    """The real task and a real training batch of ``cfg``'s recipe (MOBIUS: with teacher keys)."""
    features = FeatureSet(cfg.data.features, cfg.data.item_id)
    data = RunData(cfg, features)
    features.fit(data.reader.chunks("train", features.columns()))
    corpus = data.corpus()
    torch.manual_seed(0)
    recipe = recipe_for(cfg)
    model = recipe.build_model(cfg, feature_schema(features, cfg.model.embedding_dim))
    prepared = recipe.prepare(cfg, data, corpus, False)
    recipe.bind(prepared, model)
    run = RunDir(cfg.resolved_run_dir).ensure()
    features.save(run.features)
    recipe.begin(prepared, run, False)  # (DMTL trains its teacher here)
    task = prepared.task
    if cfg.objective.ssl is not None:
        task = SelfSupervisedTask(task, corpus.features, cfg.objective.ssl, cfg.train.seed)
    batch = next(iter(prepared.batches.batches(cfg.train.batch_size)))
    return model, task, batch


def state(task) -> dict:
    return copy.deepcopy(task.state_dict())


def same_state(a: dict, b: dict) -> bool:
    def equal(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        return x == y
    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


def check_eval_mode_is_side_effect_free(model, task, batch, step: int) -> None:
    task.train()
    model.train()
    task.loss(model, batch, 0)  # a training step first: estimator and streams are not fresh
    model.eval()
    task.eval()
    before = state(task)
    with torch.no_grad():
        first, _ = task.loss(model, batch, step)
        second, _ = task.loss(model, batch, step)
    assert torch.isfinite(first)
    assert float(first) == float(second)
    assert same_state(before, state(task))
    task.train()
    task.loss(model, batch, step)
    assert not same_state(before, state(task)), "train mode changed nothing: the check is blind"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_a_task_in_eval_mode_changes_nothing(tiny_config, tmp_path, name):
    cfg = tiny_config(tmp_path / name, objective=OBJECTIVES[name])
    model, task, batch = prepared_task(cfg)
    if name in STATELESS:  # no state to keep: only its loss has to repeat
        model.eval()
        task.eval()
        with torch.no_grad():
            assert float(task.loss(model, batch, 1)[0]) == float(task.loss(model, batch, 1)[0])
        return
    check_eval_mode_is_side_effect_free(model, task, batch, step=1)


def test_mobius_in_eval_mode_mines_nothing(sim_dir, tmp_path):
    from twotower.presets import mobius_simulator_config

    sections = tiny_sections()
    cfg = mobius_simulator_config(sim_dir, tmp_path / "mobius", model={"embedding_dim": 8,
                                                                       "hidden": [16], "output_dim": 8},
                                  train=sections["train"], eval=sections["eval"],
                                  objective={"mobius": {"warmup_steps": 0, "max_bad_per_batch": 16}})
    model, task, batch = prepared_task(cfg)
    assert task.teacher is not None and "mobius_query_key" in batch.extra  # it could mine
    check_eval_mode_is_side_effect_free(model, task, batch, step=5)
    assert task.mining_steps == 2  # the two training-mode calls mined, the eval ones did not
    model.eval()
    task.eval()
    _, logs = task.loss(model, batch, 5)
    assert "bad_cases" not in logs
