"""SafeFileSystemReader: real DCP checkpoints load; crafted metadata is refused without running anything."""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from mimo.checkpoint import CheckpointError, SafeFileSystemReader, load_metadata

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.language.layers.0.weight": torch.randn(4, 3, generator=generator),
        "model.images.proj.bias": torch.randn(5, generator=generator).to(torch.bfloat16),
        "optim.language.step": torch.tensor(7.0),
        "data.order": torch.randperm(9, generator=generator),
    }


def _saved(folder: Path, state: dict) -> Path:
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder))
    return folder


class _RunsCommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_real_dcp_checkpoint_loads_through_the_safe_reader_with_identical_tensors(tmp_path):
    saved = _state()
    folder = _saved(tmp_path / "ckpt", {key: value.clone() for key, value in saved.items()})
    loaded = {key: torch.zeros_like(value) for key, value in saved.items()}
    dcp.load(loaded, storage_reader=SafeFileSystemReader(folder))
    for key, value in saved.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value), key


def test_the_safe_reader_reads_the_same_metadata_as_dcps_own_reader(tmp_path):
    folder = _saved(tmp_path / "ckpt", _state())
    safe = SafeFileSystemReader(folder).read_metadata()
    plain = dcp.FileSystemReader(folder).read_metadata()
    assert safe.state_dict_metadata == plain.state_dict_metadata
    assert safe.storage_data == plain.storage_data


def test_metadata_that_calls_os_system_is_refused_and_the_command_never_runs(tmp_path):
    folder = _saved(tmp_path / "ckpt", _state())
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_RunsCommand(marker)))
    with pytest.raises(CheckpointError, match=rf"refused to unpickle {os.system.__module__}\.system"):
        SafeFileSystemReader(folder).read_metadata()
    with pytest.raises(CheckpointException, match="refused to unpickle"):
        dcp.load({"optim.language.step": torch.zeros(())}, storage_reader=SafeFileSystemReader(folder))
    assert not marker.exists()


def test_a_payload_hidden_inside_genuine_metadata_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    metadata = Metadata(state_dict_metadata={}, storage_meta=StorageMeta(checkpoint_id=_RunsCommand(marker)))
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=f"{tmp_path / '.metadata'}: refused to unpickle"):
        load_metadata(tmp_path / ".metadata")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch", "load"),  # a torch function, not a dtype
        ("torch.distributed.checkpoint.state_dict_saver", "save"),  # a DCP function
        ("torch.distributed.checkpoint.filesystem", "FileSystemWriter"),  # a DCP class that is not plain data
        ("torch.distributed.checkpoint.filesystem", "os"),  # a module the DCP file imported
        ("torch.distributed.checkpoint.filesystem", "Path"),  # a class the DCP file imported
        ("torch.distributed.checkpoint.metadata", "Metadata.__init__"),  # dotted names reach attributes
        ("torch.distributed.checkpoint.no_such_module", "X"),
    ],
)
def test_globals_outside_the_allowlist_are_refused(tmp_path, module, name):
    (tmp_path / ".metadata").write_bytes(f"c{module}\n{name}\n.".encode())  # protocol 0: GLOBAL, STOP
    with pytest.raises(CheckpointError, match=f"refused to unpickle {module}.{name}"):
        load_metadata(tmp_path / ".metadata")


def test_a_refused_module_is_not_even_imported(tmp_path):
    module = "this"  # importing it prints a poem: a visible side effect
    assert module not in sys.modules
    (tmp_path / ".metadata").write_bytes(f"c{module}\nx\n.".encode())
    with pytest.raises(CheckpointError, match="refused to unpickle this.x"):
        load_metadata(tmp_path / ".metadata")
    assert module not in sys.modules


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", pickle.dumps([1, 2, 3])])
def test_metadata_that_is_not_dcp_metadata_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / ".metadata").write_bytes(content)
    with pytest.raises(CheckpointError, match=str(tmp_path / ".metadata")):
        load_metadata(tmp_path / ".metadata")


def test_missing_metadata_is_an_incomplete_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint: DCP metadata {tmp_path / '.metadata'}"):
        SafeFileSystemReader(tmp_path).read_metadata()


def test_non_tensor_entries_are_never_loaded(tmp_path):
    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _saved(folder, {"weight": torch.ones(2), "counter": 3})  # DCP stores the int as a pickled BYTE_IO item
    with pytest.raises(CheckpointException, match="non-tensor entries .*tensors only:\n  counter"):
        dcp.load({"weight": torch.zeros(2), "counter": 0}, storage_reader=SafeFileSystemReader(folder))
    tensors_only = {"weight": torch.zeros(2)}
    dcp.load(tensors_only, storage_reader=SafeFileSystemReader(folder))
    assert torch.equal(tensors_only["weight"], torch.ones(2))
