"""Checkpoints: weights in safetensors, trainer state via ``torch.save`` read back with
``weights_only=True`` (no pickle execution), each checkpoint a folder renamed into place."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from twotower.errors import ArtifactError
from twotower.run import (FORMAT_VERSION, RunDir, atomic_write, atomic_write_dir,
                          read_json_artifact, sha256_file)

PREFIX = "step_"


def save_weights(module: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """state_dict -> safetensors, written atomically (shared tensors saved once each)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    seen: dict[int, str] = {}
    unique = {}
    for k, v in state.items():
        key = (v.data_ptr(), v.numel(), v.dtype) if v.numel() else id(v)
        if key in seen:  # tied weights: safetensors refuses aliases, so store a copy
            unique[k] = v.clone()
        else:
            seen[key] = k
            unique[k] = v
    return atomic_write(path, lambda p: save_file(unique, str(p), metadata=metadata))


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: corrupt weights file ({err})") from None
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ArtifactError(f"{path}: weights do not fit this model: {err}") from None


def _digest(path: Path) -> str:
    return sha256_file(path)


def verify_weights_digest(path: str | Path, expected: str | None, recorded_in: str | Path) -> None:
    """Refuse weights whose sha256 differs from the one recorded when they were exported
    (``weights_sha256`` of contract.json): flipped bytes in a safetensors file can still parse
    and load, so only the checksum tells. ``expected=None`` (nothing recorded) skips the check."""
    if expected is None:
        return
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights not found")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(f"{path}: checksum mismatch — sha256 {actual[:12]}… but {recorded_in} "
                            f"records weights_sha256 {str(expected)[:12]}…; the weights file is "
                            "corrupt or was replaced. Restore it, or retrain the run")


def verify_run_weights(run: RunDir) -> None:
    """A run's ``model.safetensors`` against its contract.json (once the run was exported)."""
    if not run.contract.is_file():
        return  # mid-training: nothing recorded yet
    contract = read_json_artifact(run.contract, "similarity contract")
    expected = contract.get("weights_sha256") if isinstance(contract, dict) else None
    verify_weights_digest(run.weights, expected, run.contract)


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module,
                    trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``folder/step_<step>/`` atomically and keep only the newest ``keep`` checkpoints."""

    def write(tmp: Path) -> None:
        save_weights(model, tmp / "model.safetensors")
        torch.save(trainer_state, tmp / "trainer.pt")
        manifest = {"format_version": FORMAT_VERSION, "step": step,
                    "sha256": {n: _digest(tmp / n) for n in ("model.safetensors", "trainer.pt")}}
        (tmp / "manifest.json").write_text(json.dumps(manifest))

    path = atomic_write_dir(folder / f"{PREFIX}{step:09d}", write)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Verify the checksums, load the weights into ``model``, return the trainer state."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        for name, digest in manifest["sha256"].items():
            if _digest(path / name) != digest:
                raise ArtifactError(f"checkpoint {path}: {name} is corrupt (checksum mismatch); "
                                    "the run folder was left untouched — delete this checkpoint "
                                    "folder to resume from the previous one")
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ArtifactError(f"checkpoint {path}: unreadable manifest ({err})") from None
    load_weights(model, path / "model.safetensors")
    try:
        return torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ArtifactError(f"checkpoint {path}: corrupt trainer state ({err})") from None
