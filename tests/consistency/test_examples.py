"""examples/dmtl.yaml and examples/ldm.yaml load, resolve their paths beside the config and pass
their recipe's checks against a simulated log with funnel.parquet (the folder the comments name)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from twotower.config import load_config
from twotower.recipes import recipe_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("example,objective", [("dmtl", "dmtl"), ("ldm", "ldm")])
def test_example_loads_and_passes_its_recipe_checks(funnel_sim_dir, tmp_path, example, objective):
    import twotower.pipeline  # noqa: F401  (registers the recipes)
    from twotower.features.feature_set import FeatureSet
    from twotower.intake import check_inputs

    shutil.copytree(funnel_sim_dir, tmp_path / "data")
    src = ROOT / "examples" / f"{example}.yaml"
    copy = tmp_path / f"{example}.yaml"
    copy.write_text(src.read_text())
    cfg = load_config(copy)
    assert cfg.objective.name == objective
    recipe = recipe_for(cfg)
    assert type(recipe).__name__.lower().startswith(objective)
    recipe.check(cfg)  # the LDM funnel path resolved beside the config
    check_inputs(cfg, FeatureSet(cfg.data.features, cfg.data.item_id), recipe.columns(cfg))
    assert all(len(line) <= 110 for line in src.read_text().splitlines())
