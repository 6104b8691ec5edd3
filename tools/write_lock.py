"""Write requirements.lock from the running environment: `name==version` of every installed
distribution except twotower itself (`make lock` runs this in a scratch venv).

Local version labels are dropped (`torch==2.13.0+cpu` -> `torch==2.13.0`): the label names the
build, and `pip install torch==2.13.0` picks the CPU build from this machine's disk."""
from __future__ import annotations

import os
import sys
import tempfile
from importlib.metadata import distributions
from pathlib import Path


def main(out: str) -> None:
    pins = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() == "twotower":
            continue
        pins[name.lower()] = dist.version.split("+")[0]
    text = ("# Exact versions `make` installs (regenerate with `make lock`; tests/test_lock.py fails when\n"
            "# pyproject.toml asks for something this file does not pin).\n"
            + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    path = Path(out)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
