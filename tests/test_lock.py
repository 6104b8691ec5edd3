"""requirements.lock is what `make` installs: it must pin every requirement of the extras `make`
installs (with a version pyproject.toml accepts), and this environment must be exactly it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, ver = line.partition("==")
        assert sep, f"requirements.lock: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = ver.strip()
    return pins


def make_extras() -> list[str]:
    match = re.search(r"^EXTRAS\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile: no EXTRAS := line"
    return match.group(1).split(",")


def installed_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in make_extras():
        assert extra in project["optional-dependencies"], f"Makefile EXTRAS: unknown extra {extra!r}"
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_lock_pins_every_requirement_with_an_accepted_version():
    pins = lock_pins()
    stale = []
    for req in installed_requirements():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None or not req.specifier.contains(pin, prereleases=True):
            stale.append(f"{req} (lock: {pin})")
    assert not stale, ("requirements.lock is stale, run `make lock`: " + ", ".join(stale))


def test_environment_matches_the_lock():
    """Every installed distribution is pinned, at the version installed: a package that came in
    outside the lock (a new dependency, or a lock edited by hand) shows up here."""
    import sys
    from importlib.metadata import distributions

    if not (ROOT / ".venv").exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the project's make-installed .venv")
    pins = lock_pins()
    drift = []
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if not name or name == "twotower":
            continue
        got = dist.version.split("+")[0]
        if pins.get(name) != got:
            drift.append(f"{name}: installed {got}, lock {pins.get(name)}")
    assert not drift, "environment differs from requirements.lock (run `make lock`): " + "; ".join(drift)
