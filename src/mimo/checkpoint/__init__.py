"""Checkpoint storage: staging folders, atomic commits with a checksummed manifest, ``latest``, retention,
safe reading of DCP metadata, and shape checks before loading.

The state dict given to ``torch.distributed.checkpoint.save`` must hold tensors only (``require_tensors_only``);
everything else (train state, scheduler state, config) goes into JSON files written with ``write_json``.
"""

from __future__ import annotations

from mimo.checkpoint.atomic import read_json, write_json
from mimo.checkpoint.dcp_io import load_tensors, save_tensors
from mimo.checkpoint.errors import CheckpointError
from mimo.checkpoint.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from mimo.checkpoint.safe_reader import SafeFileSystemReader, load_metadata
from mimo.checkpoint.shapes import TensorSpec, check_compatible, read_tensor_shapes, require_tensors_only, tensor_specs
from mimo.checkpoint.store import LATEST_NAME, CheckpointStore, checkpoint_name, new_nonce

__all__ = [
    "LATEST_NAME",
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointStore",
    "Manifest",
    "ManifestEntry",
    "SafeFileSystemReader",
    "TensorSpec",
    "check_compatible",
    "checkpoint_name",
    "load_metadata",
    "load_tensors",
    "new_nonce",
    "read_json",
    "read_tensor_shapes",
    "require_tensors_only",
    "save_tensors",
    "tensor_specs",
    "write_json",
]
