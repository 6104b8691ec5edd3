"""bench/plots.py redraws a bench's PNG from its JSON (the --plot-only path, no re-run)."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _plots():
    spec = importlib.util.spec_from_file_location("bench_plots", BENCH / "plots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["mobius", "index", "serve_load"])
def test_png_beside_the_json(name, tmp_path):
    src = BENCH / "results" / f"{name}.json"
    out = tmp_path / src.name
    shutil.copyfile(src, out)
    made = _plots().plot_results(name, json.loads(out.read_text()), out)
    assert made[0] == tmp_path / f"{name}.png"
    for p in made:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
