"""The README's marked examples run as written, so the docs cannot drift from the code.

A fenced ```bash or ```python block right after a ``<!-- doctest -->`` line is executed; the
marked blocks run in README order in one scratch folder (a walk: later blocks use what earlier
ones made). Unmarked blocks (configs to adapt, paths of your own data) are left alone. To stay
fast, the sizes in ``SHRINK`` are scaled down before running — the only edits made to the text —
and the service port is a free one. A bash block made only of plain ``twotower ...`` lines runs
those commands through the CLI in this process (the same argv, parsed by the same app: it saves
a torch import per command); any other block (a background server, curl) runs in bash.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKED = re.compile(r"<!-- doctest -->[ \t]*\n```(bash|python)\n(.*?)```", re.S)
#: README text -> what the test runs instead (smaller log, fewer epochs: same commands)
SHRINK = {"--impressions 20000": "--impressions 3000", "train.epochs=3": "train.epochs=1"}
PRELUDE = """set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"""


def install_command(bin_dir: Path) -> None:
    """A ``twotower`` executable for this checkout (exec: a background job is the server itself)."""
    bin_dir.mkdir()
    exe = bin_dir / "twotower"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m twotower "$@"\n')
    exe.chmod(0o755)


def plain_cli_lines(code: str) -> list[list[str]] | None:
    """The argv of each line when every line is a plain `twotower` command, else None."""
    argvs = []
    for line in code.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] != "twotower" or re.search(r"[&|;<>$`\\]", line.split("#")[0]):
            return None
        argvs.append(argv[1:])
    return argvs


def run_cli(argvs: list[list[str]]) -> str:
    from typer.testing import CliRunner

    from twotower.cli import app

    out = []
    for argv in argvs:
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, f"README command failed: twotower {' '.join(argv)}\n{res.output}"
        out.append(res.output)
    return "\n".join(out)


def run_bash(code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(["bash", "-c", PRELUDE + code], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the block and anything it started
        out, err = proc.communicate()
        raise AssertionError(f"README block timed out:\n{code}\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def marked_blocks(text: str) -> list[tuple[str, str]]:
    return MARKED.findall(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_cli_lines():
    assert plain_cli_lines("twotower index runs/x   # a comment\n\ntwotower evaluate runs/x\n") == [
        ["index", "runs/x"], ["evaluate", "runs/x"]]
    assert plain_cli_lines("twotower serve runs/x &\ncurl -s localhost\n") is None


def test_marker_finds_only_marked_blocks():
    text = ("```bash\nnot run\n```\n<!-- doctest -->\n```bash\nrun me\n```\n"
            "<!-- doctest -->\n```python\nx = 1\n```\n```python\nnot run\n```\n")
    assert marked_blocks(text) == [("bash", "run me\n"), ("python", "x = 1\n")]


def test_readme_walk_runs_as_written(tmp_path, monkeypatch):
    blocks = marked_blocks(README.read_text())
    assert [lang for lang, _ in blocks].count("bash") >= 3 and any(lang == "python" for lang, _ in blocks)
    port = str(free_port())
    install_command(tmp_path / "bin")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    outputs = []
    monkeypatch.chdir(tmp_path)
    for lang, code in blocks:
        for old, new in SHRINK.items():
            code = code.replace(old, new)
        code = code.replace("8765", port)
        if lang == "bash" and (argvs := plain_cli_lines(code)) is not None:
            outputs.append(run_cli(argvs))
        elif lang == "bash":
            res = run_bash(code, tmp_path, env)
            assert res.returncode == 0, f"README block failed:\n{code}\n{res.stdout}\n{res.stderr}"
            outputs.append(res.stdout + res.stderr)
        else:
            exec(compile(code, "README.md", "exec"), {})
    # what the walk promises: a holdout run with test metrics, an exact index with its recall,
    # the splits evaluated, a JSON answer from the service
    run = tmp_path / "runs" / "impressions"
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"
    walk = "\n".join(outputs)
    assert "epoch 1/1  loss" in walk and "recall@" in walk and '"splits"' in walk
    # the service's answer (stderr also carries its JSON access log)
    answer, _ = json.JSONDecoder().raw_decode(walk[walk.rindex('{"results"'):])
    assert answer["index_version"] == "v000001" and len(answer["results"][0]["ids"]) == 5


@pytest.mark.parametrize("needle", ["label > 0", '"index_version"', "data.holdout"])
def test_readme_states(needle):
    """What the docs must say (issue 18): softmax trains on label > 0 rows, the response
    shape, the holdout."""
    assert needle in README.read_text() or needle.replace("data.", "") in README.read_text()
