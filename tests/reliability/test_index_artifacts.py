"""Issue 12, index artifacts: an edited manifest, a CURRENT pointing outside the run and bad
business weights are clear errors (ArtifactError / DataError naming the field), never a crash in
``serve`` or a silently wrong ranking."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twotower.cli import app as cli
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.index.ann import build_index, load_index
from twotower.index.run_index import build_run_index
from twotower.serve.app import create_app


def _edit_manifest(run, version, edit) -> None:
    path = run / "index" / version / "manifest.json"
    m = json.loads(path.read_text())
    new = edit(m)  # an edit returns a replacement, or changes m in place
    path.write_text(json.dumps(m if new is None else new))


def _delete(key):
    return lambda m: m.pop(key) and None


def _set(key, value, sub=None):
    def edit(m):
        (m[sub] if sub else m)[key] = value
    return edit


# (index kind built, edit, words the error must contain)
MANIFEST_EDITS = {
    "hnsw kind edited to flat": ("hnsw", _set("kind", "flat"), ["kind 'flat'", "params.M"]),
    "hnsw kind and params edited to flat": ("hnsw", lambda m: m.update(kind="flat", params={}),
                                            ["kind 'flat'", "IndexHNSWFlat"]),
    "ef_search not a number": ("hnsw", _set("ef_search", "abc", "params"), ["params.ef_search", "'abc'"]),
    "ef_search zero": ("hnsw", _set("ef_search", 0, "params"), ["params.ef_search"]),
    "missing kind": ("flat", _delete("kind"), ["kind", "Field required"]),
    "unknown kind": ("flat", _set("kind", "annoy"), ["kind", "annoy"]),
    "missing nprobe": ("ivf-flat", lambda m: m["params"].pop("nprobe") and None, ["params.nprobe"]),
    "extra parameter": ("flat", _set("nprobe", 4, "params"), ["params.nprobe"]),
    "params not an object": ("flat", _set("params", [1, 2]), ["params"]),
    "dim as a string": ("flat", _set("dim", "8"), ["dim"]),
    "ivf edited to flat": ("ivf-flat", lambda m: m.update(kind="flat", params={}),
                           ["kind 'flat'", "IndexIVFFlat"]),
    "manifest emptied": ("flat", lambda m: {"format_version": 1}, ["version", "Field required"]),
    "manifest a list": ("flat", lambda m: [m], ["expected a JSON object"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_edited_manifest_is_a_clear_artifact_error(run_copy, case):
    kind, edit, words = MANIFEST_EDITS[case]
    version = build_run_index(run_copy, kind).version
    _edit_manifest(run_copy, version, edit)
    with pytest.raises(ArtifactError) as err:
        load_index(run_copy)
    msg = str(err.value)
    assert "manifest.json" in msg and ("rebuild" in msg or "corrupt" in msg), msg
    for w in words:
        assert w in msg, (w, msg)
    # `twotower serve` stops with that message, no traceback
    res = CliRunner().invoke(cli, ["serve", str(run_copy)])
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output, res.output
    assert "manifest.json" in res.output


def test_edited_manifest_reload_is_409_and_build_params_are_typed(run_copy):
    """Hot swap to an edited version: 409, the old version keeps serving; a bad --param at build
    time is a ConfigError (it used to crash inside FAISS parameter setting)."""
    client = TestClient(create_app(run_copy, api_key="k"), raise_server_exceptions=False)
    version = build_run_index(run_copy, "hnsw").version
    _edit_manifest(run_copy, version, _set("ef_search", "abc", "params"))
    r = client.post("/admin/reload", headers={"X-API-Key": "k"})
    assert r.status_code == 409 and "params.ef_search" in r.json()["detail"], r.text
    assert client.post("/retrieve", json={"queries": [{"user_id": 1}], "k": 3}).status_code == 200
    with pytest.raises(ConfigError, match="ef_search"):
        build_run_index(run_copy, "hnsw", {"ef_search": "abc"})
    with pytest.raises(ConfigError, match="nlist"):
        build_run_index(run_copy, "ivf-flat", {"nlist": -3})


@pytest.mark.parametrize("current", ["../../other/index/v000001", "/etc", "v1", "",
                                     "v000001/../../x", "v000009"])
def test_current_must_name_a_version_of_this_run(run_copy, current):
    (run_copy / "index" / "CURRENT").write_text(current + "\n")
    with pytest.raises(ArtifactError) as err:
        load_index(run_copy)
    msg = str(err.value)
    assert ("not an index version of this run" in msg) if current != "v000009" else \
        ("v000009 not found" in msg), msg
    with pytest.raises(ArtifactError, match="not an index version"):
        load_index(run_copy, "../v000001")


WEIGHT_CASES = {  # weights per item row -> what the error says; does it name item row 7?
    "all zero": (lambda n: np.zeros(n), "every one of the", False),
    "NaN": (lambda n: np.where(np.arange(n) == 7, np.nan, 1.0), "not finite", True),
    "negative": (lambda n: np.where(np.arange(n) == 7, -2.0, 1.0), "negative", True),
    "missing": (lambda n: [None if i == 7 else 1.0 for i in range(n)], "missing weights", True),
    "text": (lambda n: ["high"] * n, "expected a number", False),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_bad_business_weights_name_the_column_and_an_item(run_copy, tmp_path, case):
    make, words, names_item = WEIGHT_CASES[case]
    cfg_path = run_copy / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    ads = pq.read_table(cfg["data"]["items"])
    ads = ads.set_column(ads.column_names.index("bid"), "bid", pa.array(make(ads.num_rows)))
    pq.write_table(ads, tmp_path / "ads.parquet")
    cfg["data"]["items"] = str(tmp_path / "ads.parquet")
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError) as err:
        build_run_index(run_copy, "flat", weight_column="bid")
    msg = str(err.value)
    assert "'bid'" in msg and words in msg, msg
    if names_item:  # the offending item is named by its raw id
        assert f"item {ads['ad_id'][7].as_py()!r}" in msg, msg
    if case in ("all zero", "NaN", "negative"):  # the same check guards the Python API
        with pytest.raises(DataError, match="'w'.*item 'e'" if names_item else "'w'"):
            build_index(np.ones((5, 4), np.float32), ["a", "b", "c", "d", "e"], "flat",
                        weights=make(10)[3:8], weight_column="w")
