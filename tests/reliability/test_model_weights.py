"""Issue 12, model weights: model.safetensors whose bytes changed after export is refused at load
(contract.json records its sha256), even when the file still parses as safetensors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from twotower.errors import ArtifactError
from twotower.runs import load_model
from twotower.run import RunDir
from twotower.serve.retriever import Retriever
from twotower.train.checkpoint import save_weights


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-9] ^= 0x5A  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def _replace_with_other_weights(path):
    state = load_file(str(path))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(path))


@pytest.mark.parametrize("corrupt", [_flip_data_byte, _replace_with_other_weights],
                         ids=["flipped byte", "other valid weights"])
def test_changed_weights_are_refused_at_load(run_copy, corrupt):
    run = RunDir(run_copy)
    good = load_model(run)  # verified against contract.json
    corrupt(run.weights)
    load_file(str(run.weights))  # still a readable safetensors file: only the checksum tells
    with pytest.raises(ArtifactError, match="checksum mismatch") as err:
        load_model(run)
    assert "model.safetensors" in str(err.value) and "contract.json" in str(err.value)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Retriever(run_copy)
    # an explicit weights file (a checkpoint) is the caller's choice and is not checked here
    other = run_copy / "other.safetensors"
    save_weights(good, other)
    assert torch.equal(next(iter(load_model(run, other).state_dict().values())),
                       next(iter(good.state_dict().values())))
