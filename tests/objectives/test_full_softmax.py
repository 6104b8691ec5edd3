"""objective full_softmax: the exact softmax over every corpus item."""
import pytest
import torch

from twotower.config import ObjectiveConfig
from twotower.errors import ConfigError
from twotower.objectives.losses import full_softmax
from twotower.objectives.tasks import FullSoftmaxTask, build_task


def test_equals_cross_entropy_over_the_corpus_when_the_positive_is_in_it():
    gen = torch.Generator().manual_seed(0)
    q, items = torch.randn(5, 8, generator=gen), torch.randn(12, 8, generator=gen)
    corpus_ids = torch.arange(100, 112)
    pos_rows = torch.tensor([0, 3, 3, 11, 7])
    logits = q @ items.T
    expected = torch.nn.functional.cross_entropy(logits, pos_rows)
    got = full_softmax(logits[torch.arange(5), pos_rows], logits, corpus_ids[pos_rows], corpus_ids)
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_positive_missing_from_the_corpus_is_its_own_column():
    pos, corpus = torch.tensor([2.0]), torch.tensor([[0.5, -1.0]])
    got = full_softmax(pos, corpus, torch.tensor([7]), torch.tensor([1, 2]))
    expected = -torch.log_softmax(torch.tensor([2.0, 0.5, -1.0]), 0)[0]
    assert torch.allclose(got, expected)


def test_weights_give_a_weighted_mean():
    pos = torch.tensor([1.0, -1.0])
    corpus = torch.zeros(2, 3)
    ids, corpus_ids = torch.tensor([9, 9]), torch.tensor([1, 2, 3])
    each = torch.stack([full_softmax(pos[r:r + 1], corpus[r:r + 1], ids[:1], corpus_ids)
                        for r in range(2)])
    got = full_softmax(pos, corpus, ids, corpus_ids, torch.tensor([3.0, 1.0]))
    assert torch.allclose(got, (3 * each[0] + each[1]) / 4)


def test_trains_end_to_end_through_train_run(tiny_config, tmp_path):
    from twotower.pipeline import train_run

    s = train_run(tiny_config(tmp_path / "run", objective={"name": "full_softmax"},
                              train={"epochs": 1, "batch_size": 16, "max_steps": 8}))
    assert s.report["train"]["steps"] == 8
    chance = 20 / s.report["corpus_items"]  # hr@20 of a random ranking
    assert s.metrics["hr@20"] > 3 * chance


def test_needs_a_corpus_and_refuses_a_huge_one():
    cfg = ObjectiveConfig(name="full_softmax")
    with pytest.raises(ConfigError, match="corpus"):
        build_task(cfg, None)
    big = {"item_id": torch.zeros(FullSoftmaxTask.MAX_ITEMS + 1, dtype=torch.long)}
    with pytest.raises(ConfigError, match="mixed_negatives"):
        build_task(cfg, big)
