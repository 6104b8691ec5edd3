"""The MovieLens preset's sizes: "fast" by default, "full" kept reachable, others refused."""
import pytest

from twotower.errors import ConfigError
from twotower.presets import MOVIELENS_MODELS, movielens_config


def test_movielens_preset_sizes():
    fast = movielens_config("/tmp/data", "/tmp/run")
    assert (fast.model.embedding_dim, fast.model.hidden, fast.model.output_dim) == (32, [], 32)
    full = movielens_config("/tmp/data", "/tmp/run", "full", train={"epochs": 3})
    assert (full.model.embedding_dim, full.model.hidden, full.model.output_dim) == (64, [256], 64)
    assert full.train.epochs == 3 and full.objective.temperature == fast.objective.temperature == 0.05
    assert set(MOVIELENS_MODELS) == {"fast", "full"}
    # fast: 4096-row batches whose softmax runs over blocks of 1024; full: plain batches of 1024
    assert (fast.train.batch_size, fast.objective.in_batch_block) == (4096, 1024)
    assert (full.train.batch_size, full.objective.in_batch_block) == (1024, None)
    tuned = movielens_config("/tmp/data", "/tmp/run", train={"batch_size": 512},
                             objective={"in_batch_block": None})
    assert (tuned.train.batch_size, tuned.objective.in_batch_block) == (512, None)
    history = {size: next(f.max_len for f in cfg.data.features if f.name == "history")
               for size, cfg in (("fast", fast), ("full", full))}
    assert history == {"fast": 20, "full": 50}
    longer = movielens_config("/tmp/data", "/tmp/run", history_len=50)
    assert next(f.max_len for f in longer.data.features if f.name == "history") == 50
    with pytest.raises(ConfigError, match="fast, full"):
        movielens_config("/tmp/data", "/tmp/run", "huge")
