"""The MovieLens preset's sizes: "fast" by default, "full" kept reachable, others refused."""
import pytest

from twotower.errors import ConfigError
from twotower.presets import MOVIELENS_MODELS, movielens_config


def test_movielens_preset_sizes():
    fast = movielens_config("/tmp/data", "/tmp/run")
    assert (fast.model.embedding_dim, fast.model.hidden, fast.model.output_dim) == (32, [], 32)
    full = movielens_config("/tmp/data", "/tmp/run", "full", train={"epochs": 3})
    assert (full.model.embedding_dim, full.model.hidden, full.model.output_dim) == (64, [256], 64)
    assert full.train.epochs == 3 and full.model.temperature == fast.model.temperature == 0.05
    assert set(MOVIELENS_MODELS) == {"fast", "full"}
    with pytest.raises(ConfigError, match="fast, full"):
        movielens_config("/tmp/data", "/tmp/run", "huge")
