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


@pytest.fixture(scope="session")
def funnel_sim_dir(tmp_path_factory) -> Path:
    """The tiny log again, with its ranking-stage log (funnel.parquet) for DMTL / LDM tests."""
    from twotower.data.simulator import SimulatorConfig, simulate

    out = tmp_path_factory.mktemp("tiny_funnel_sim")
    simulate(SimulatorConfig(**TINY_SIM, funnel_log=True), out)
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


@pytest.fixture(scope="session")
def served_run(sim_dir, tmp_path_factory) -> Path:
    """A tiny trained simulator run with a flat index (tests/reliability): read it, don't edit it."""
    from twotower.index.run_index import build_run_index
    from twotower.pipeline import train_run
    from twotower.presets import simulator_config

    run = tmp_path_factory.mktemp("served") / "run"
    train_run(simulator_config(sim_dir, run, **tiny_sections(epochs=1)), overwrite=True)
    build_run_index(run, "flat")
    return run


@pytest.fixture
def run_copy(served_run, tmp_path) -> Path:
    """A private copy of ``served_run`` (same data files) for a test to corrupt."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(served_run, dst)
    return dst
