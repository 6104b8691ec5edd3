"""A run is a folder of artifacts.

Layout (every file written to a temporary name in the same folder and renamed, so a reader never
sees half a file)::

    runs/<name>/
      config.yaml            resolved config
      features.json          fitted feature encoders (vocabularies, hash sizes, dense stats)
      model.safetensors      final weights (+ model.json: name, config, format version)
      contract.json          similarity contract: metric, normalisation, temperature, vectors
      checkpoints/step_*/    model.safetensors + trainer.pt (loaded with weights_only=True)
      metrics.jsonl          one line per logged step / validation
      metrics.json           final evaluation
      report.json            data report: rows read, skipped, OOV counts
      embeddings/            items.parquet, items.npy, queries.parquet ...
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from twotower.errors import ArtifactError

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create 0600 / 0700 entries; a finished artifact gets the permissions a plain
# open() would have given it, so a service running as another user can still read the run
_UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same folder, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json_artifact(path: str | Path, what: str, hint: str = "",
                       format_version: int | None = None) -> Any:
    """A JSON artifact of a run: a missing, corrupt or other-version file is one ArtifactError
    naming the file and ``what`` it is (``hint``: what to do when it is missing)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} not found" + (f" — {hint}" if hint else "")) from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: corrupt {what} ({err})") from None
    if format_version is not None and not isinstance(data, dict):
        raise ArtifactError(f"{path}: corrupt {what} (expected a JSON object, got "
                            f"{type(data).__name__})")
    if format_version is not None and data.get("format_version") != format_version:
        raise ArtifactError(f"{path}: {what} format version {data.get('format_version')} is not "
                            f"{format_version}")
    return data


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (weights and indexes can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp_dir)``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class RunDir:
    """Names of the artifacts in one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def ensure(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def features(self) -> Path:
        return self.root / "features.json"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def model_meta(self) -> Path:
        return self.root / "model.json"

    @property
    def contract(self) -> Path:
        return self.root / "contract.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def exists(self) -> bool:
        return self.config.is_file()
