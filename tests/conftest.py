"""Shared fixtures: one tiny simulated sponsored-search log per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIM = dict(n_impressions=6000, n_ads=200, n_queries=100, n_users=60, n_advertisers=20,
                candidates_per_search=20, seed=3)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory) -> Path:
    """A tiny simulated log (impressions/ads Parquet + truth), written once per session."""
    from twotower.data.simulator import SimulatorConfig, simulate

    out = tmp_path_factory.mktemp("tiny_sim")
    simulate(SimulatorConfig(**TINY_SIM), out)
    return out


def tiny_sections(**train) -> dict:
    """Small model and short training for the simulator preset."""
    return {
        "model": {"embedding_dim": 8, "hidden": [16], "output_dim": 8},
        "train": {"epochs": 2, "batch_size": 32, "progress": False, "checkpoint_every": 10_000,
                  "threads": 1, **train},
        "eval": {"ks": [5, 20], "group_by": "search_id", "metric": "recall@20"},
    }


@pytest.fixture
def tiny_config(sim_dir):
    """``tiny_config(run_dir, **overrides)`` -> a RunConfig of the simulator preset, tiny sizes."""
    from twotower.config import merge
    from twotower.presets import simulator_config

    def make(run_dir, train=None, **sections):
        secs = merge(tiny_sections(**(train or {})), sections)
        return simulator_config(sim_dir, run_dir, **secs)

    return make
