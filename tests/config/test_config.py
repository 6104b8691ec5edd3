"""Run config: YAML loading, errors by dotted path, overrides, relative paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from twotower.config import FeatureKind, load_config, parse_overrides, validate_config
from twotower.errors import ConfigError


def base_raw(train="data/log.parquet") -> dict:
    return {
        "name": "t",
        "data": {
            "train": train,
            "features": [
                {"name": "user_id", "side": "query"},
                {"name": "item_id", "side": "item"},
                {"name": "title", "side": "item", "kind": "text", "tokens": ["word", "char3"]},
            ],
        },
        "model": {"name": "dssm", "hidden": [32]},
        "train": {"epochs": 3, "lr": 0.01},
    }


def write(tmp_path: Path, raw: dict, name="run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_yaml_load(tmp_path):
    cfg = load_config(write(tmp_path, base_raw()))
    assert cfg.name == "t"
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.model.hidden == [32]
    assert cfg.data.features[2].kind == FeatureKind.TEXT
    assert cfg.data.features[2].tokens == ["word", "char3"]


def test_misspelt_field_named_by_path_with_suggestion(tmp_path):
    raw = base_raw()
    raw["train"]["learning_rat"] = 1
    raw["train"]["epohcs"] = raw["train"].pop("epochs")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    msg = str(e.value)
    assert "train.epohcs" in msg and "did you mean 'epochs'" in msg
    assert "train.learning_rat" in msg
    assert str(tmp_path / "run.yaml") in msg


def test_misspelt_nested_feature_field(tmp_path):
    raw = base_raw()
    raw["data"]["features"][1]["sid"] = "item"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    assert "data.features.1.sid" in str(e.value)


def test_misspelt_model_field_uses_model_fields(tmp_path):
    raw = base_raw()
    raw["model"] = {"name": "dat", "mimic_weigth": 0.1}  # a field only DAT's config has
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    assert "model.mimic_weigth" in str(e.value) and "did you mean 'mimic_weight'" in str(e.value)


def test_temperature_belongs_to_the_objective(tmp_path):
    raw = base_raw()
    raw["objective"] = {"temperature": 0.1}
    cfg = load_config(write(tmp_path, raw))
    assert cfg.objective.temperature == 0.1 and "temperature" not in type(cfg.model).model_fields
    # an older config's model.temperature is read as objective.temperature, with a warning
    raw = base_raw()
    raw["model"]["temperature"] = 0.2
    with pytest.warns(DeprecationWarning, match="objective.temperature"):
        cfg = load_config(write(tmp_path, raw))
    assert cfg.objective.temperature == 0.2
    raw["objective"] = {"temperature": 0.1}
    with pytest.raises(ConfigError, match="moved to objective.temperature"):
        load_config(write(tmp_path, raw))


def test_unknown_model_name(tmp_path):
    raw = base_raw()
    raw["model"]["name"] = "no_such_model"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    assert "no_such_model" in str(e.value) and "dssm" in str(e.value)


def test_wrong_type(tmp_path):
    raw = base_raw()
    raw["train"]["batch_size"] = "big"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    assert "train.batch_size" in str(e.value) and "'big'" in str(e.value)


def test_missing_required_and_item_id_not_listed():
    raw = base_raw()
    raw["data"]["features"] = [{"name": "user_id", "side": "query"}]
    with pytest.raises(ConfigError, match="item_id"):
        validate_config(raw)
    raw = base_raw()
    del raw["data"]["train"]
    with pytest.raises(ConfigError, match="data.train"):
        validate_config(raw)


def test_set_overrides(tmp_path):
    cfg = load_config(write(tmp_path, base_raw()),
                      ["train.lr=3e-4", "model.hidden=[128,64]", "objective.name=pointwise_bce",
                       "name=other"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 3  # untouched sibling kept
    assert cfg.model.hidden == [128, 64]
    assert cfg.objective.name == "pointwise_bce"
    assert cfg.name == "other"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(write(tmp_path, base_raw()), ["train.nope=1"])


def test_relative_data_paths_resolved_against_config_file(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    (cfg_dir / "data").mkdir(parents=True)
    (cfg_dir / "data" / "log.parquet").write_bytes(b"x")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = load_config(write(cfg_dir, base_raw()))
    assert cfg.data.train == cfg_dir / "data" / "log.parquet"
    assert cfg.data.train.exists()


def test_missing_empty_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(tmp_path / "bad.yaml")


def test_model_specific_fields_survive_a_saved_config_round_trip():
    """config.yaml in a run folder must reload into the same model config (resume, evaluate)."""
    import yaml

    from twotower.config import dump_config, validate_config
    from twotower.presets import movielens_config

    cfg = movielens_config("/tmp/data", "/tmp/run", model={"name": "sdm", "history": "session",
                                                           "long_history": "long_history"})
    again = validate_config(yaml.safe_load(dump_config(cfg)))
    assert type(again.model) is type(cfg.model)
    assert again.model == cfg.model


def test_run_channels_and_simulator_configs_word_their_errors_alike():
    """One formatter (errors.validation_message): a header, then `  field: problem` per line,
    'did you mean' for a misspelt field and the wrong value quoted, whichever config it is."""
    from twotower.channels.config import validate_channels
    from twotower.data.simulator import SimulatorConfig

    cases = [
        (lambda: validate_config({"data": {"train": "x.parquet", "features": []},
                                  "train": {"lr": -1, "epoch": 2}}, "run.yaml"),
         "run.yaml: invalid configuration", "train.epoch", "'epochs'", "train.lr"),
        (lambda: validate_channels({"channels": [{"name": "cf", "kind": "itemcf", "log": "x",
                                                   "recnt": 3, "recent": -1}]}, "ch.yaml"),
         "ch.yaml: invalid channels configuration", "channel 'cf': recnt", "'recent'",
         "channel 'cf': recent"),
        (lambda: SimulatorConfig(n_ads=-5, n_impresions=3),
         "simulator config: invalid configuration", "n_impresions", "'n_impressions'", "n_ads"),
    ]
    for make, header, unknown, suggestion, bad_value in cases:
        with pytest.raises(ConfigError) as info:
            make()
        lines = str(info.value).splitlines()
        assert lines[0] == header
        assert f"  {unknown}: unknown field (did you mean {suggestion}?)" in lines
        assert any(line.startswith(f"  {bad_value}: ") and "(got -" in line for line in lines)
