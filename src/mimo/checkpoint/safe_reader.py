"""Read DCP checkpoints without running code from them.

``FileSystemReader.read_metadata`` calls plain ``pickle.load`` on ``.metadata``, so a crafted checkpoint can run
any command when it is loaded. ``SafeFileSystemReader`` unpickles the metadata with a ``find_class`` that only
hands out what DCP metadata is made of: DCP's own dataclasses and enums, ``torch.Size``, torch dtypes, layouts
and memory formats, ``collections.OrderedDict`` and pathlib's POSIX paths (the saved ``checkpoint_id``).

Non-tensor state dict entries (DCP's BYTE_IO items) are loaded by DCP's planner with
``torch.load(weights_only=False)``, which is unsafe too, so this reader refuses to read them: **the state dict
given to ``dcp.save`` must hold tensors only** (see ``require_tensors_only``); keep counters, RNG seeds and the
like in JSON files next to it.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.futures import Future

from mimo.checkpoint.errors import CheckpointError, format_problems

__all__ = ["METADATA_NAME", "SafeFileSystemReader", "load_metadata", "safe_unpickle"]

METADATA_NAME = ".metadata"
"""File name of DCP's global metadata in a checkpoint folder."""

_DCP_PACKAGE = "torch.distributed.checkpoint"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIXED_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # how torch.layout pickles: _get_layout("torch.strided")
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib._local", "PosixPath"),  # Python >= 3.13 spelling
    ("pathlib._local", "PurePosixPath"),
}
_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside the DCP metadata allowlist."""

    def find_class(self, module: str, name: str) -> Any:
        # Checked before any import: naming a module in a pickle must not be enough to import it.
        if not _MODULE_NAME.fullmatch(module) or not _PLAIN_NAME.fullmatch(name):
            raise _refused(module, name)
        if (module, name) in _FIXED_ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUE_TYPES):
            return getattr(torch, name)
        if module == _DCP_PACKAGE or module.startswith(_DCP_PACKAGE + "."):
            return _dcp_data_class(module, name)
        raise _refused(module, name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only DCP metadata types; CheckpointError naming any other ``module.name``."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_metadata(path: str | os.PathLike[str]) -> Metadata:
    """The DCP ``Metadata`` stored in file ``path``, read with the restricted unpickler."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"incomplete checkpoint: DCP metadata {path} does not exist") from None
    try:
        metadata = safe_unpickle(data)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, TypeError...)
        raise CheckpointError(f"{path} is not readable DCP metadata: {type(error).__name__}: {error}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` that unpickles metadata with an allowlist and refuses non-tensor (BYTE_IO) entries."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = METADATA_NAME if rank is None else f"__{rank}{METADATA_NAME}"
        metadata = load_metadata(Path(self.path) / name)
        # The same bookkeeping as FileSystemReader.read_metadata.
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        byte_items = sorted({item.dest_index.fqn for item in plan.items if item.type == LoadItemType.BYTE_IO})
        if byte_items:
            raise CheckpointError(
                format_problems(
                    f"{self.path} would load these non-tensor entries with an unrestricted torch.load; "
                    "checkpoints must hold tensors only:",
                    byte_items,
                )
            )
        return super().read_data(plan, planner)


def _dcp_data_class(module: str, name: str) -> type:
    """A dataclass or enum defined in DCP module ``module``; building one runs no code beyond field assignment."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        found = None
    is_data = isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum))
    if not is_data or found.__module__ != module:
        raise _refused(module, name)
    return found


def _refused(module: str, name: str) -> CheckpointError:
    return CheckpointError(
        f"refused to unpickle {module}.{name}: DCP metadata may only hold DCP metadata classes, torch.Size, "
        "torch dtypes/layouts/memory formats and plain containers (a tampered or foreign checkpoint?)"
    )
