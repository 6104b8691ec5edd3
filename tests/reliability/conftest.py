"""One tiny trained run with a flat index, shared by the reliability tests; a test that edits
artifacts works on its own copy (``run_copy``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


#: tests/conftest.py's tiny sizes, one epoch (a conftest cannot import its parent by name)
TINY = {"model": {"embedding_dim": 8, "hidden": [16], "output_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "checkpoint_every": 10_000,
                  "threads": 1},
        "eval": {"ks": [5, 20], "group_by": "search_id", "metric": "recall@20"}}


@pytest.fixture(scope="session")
def served_run(sim_dir, tmp_path_factory) -> Path:
    from twotower.index.run_index import build_run_index
    from twotower.pipeline import train_run
    from twotower.presets import simulator_config

    run = tmp_path_factory.mktemp("reliability") / "run"
    train_run(simulator_config(sim_dir, run, **TINY), overwrite=True, quiet=True)
    build_run_index(run, "flat")
    return run


@pytest.fixture
def run_copy(served_run, tmp_path) -> Path:
    """A private copy of the served run (same data files) to corrupt."""
    dst = tmp_path / "run"
    shutil.copytree(served_run, dst)
    return dst
