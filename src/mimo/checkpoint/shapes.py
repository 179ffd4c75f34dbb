"""Shapes and dtypes of the tensors in a checkpoint, and a check that they fit the model before loading.

A spec maps a flat state dict key (``model.language.layers.3.mlp.0.weight``) to ``(shape, dtype)``; for a
sharded (DTensor) parameter the shape is the global one, which is what DCP records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from mimo.checkpoint.errors import CheckpointError, format_problems
from mimo.checkpoint.safe_reader import METADATA_NAME, load_metadata

__all__ = ["TensorSpec", "check_compatible", "read_tensor_shapes", "require_tensors_only", "tensor_specs"]

TensorSpec = tuple[tuple[int, ...], torch.dtype]
"""``(shape, dtype)`` of one tensor."""


def read_tensor_shapes(checkpoint: str | os.PathLike[str]) -> dict[str, TensorSpec]:
    """``{key: (shape, dtype)}`` of every tensor in the DCP checkpoint folder; non-tensor entries are left out."""
    metadata = load_metadata(Path(checkpoint) / METADATA_NAME)
    return {
        key: (tuple(entry.size), entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }


def tensor_specs(state_dict: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """``{key: (shape, dtype)}`` of a state dict of tensors (the ``expected`` side of ``check_compatible``).

    Nested mappings are flattened with "." between keys, as DCP does when it saves them.
    """
    require_tensors_only(state_dict)
    return {key: (tuple(value.shape), value.dtype) for key, value in _tensor_leaves(state_dict, "")}


def check_compatible(
    expected: Mapping[str, TensorSpec], found: Mapping[str, TensorSpec], *, source: str = "the checkpoint"
) -> None:
    """Raise CheckpointError listing every expected key that is missing from ``found`` or differs in shape/dtype.

    Keys in ``found`` that are not expected are fine (e.g. optimizer state of a module that is now frozen).
    """
    problems = []
    for key in sorted(expected):
        want = expected[key]
        if key not in found:
            problems.append(f"{key}: missing from {source} (expected {_describe(want)})")
        elif _normalised(found[key]) != _normalised(want):
            problems.append(f"{key}: expected {_describe(want)}, found {_describe(found[key])}")
    if problems:
        headline = f"{source} does not fit the model: {len(problems)} of {len(expected)} tensors differ or are missing"
        raise CheckpointError(format_problems(headline, problems))


def require_tensors_only(state_dict: Mapping[str, Any], *, prefix: str = "") -> None:
    """ValueError naming every non-tensor leaf of a (possibly nested) state dict meant for ``dcp.save``."""
    offenders = _non_tensor_leaves(state_dict, prefix)
    if offenders:
        raise ValueError(
            format_problems(
                "checkpoint state dicts must hold tensors only (DCP would pickle the rest and loading it would "
                "need an unrestricted unpickler); store these in JSON instead:",
                offenders,
            )
        )


def _non_tensor_leaves(value: Any, key: str) -> list[str]:
    if isinstance(value, Tensor):
        return []
    if isinstance(value, Mapping):
        return [leaf for name, item in value.items() for leaf in _non_tensor_leaves(item, _join(key, str(name)))]
    return [f"{key or '<root>'} ({type(value).__name__})"]


def _tensor_leaves(value: Any, key: str) -> list[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        return [(key, value)]
    return [leaf for name, item in value.items() for leaf in _tensor_leaves(item, _join(key, str(name)))]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _normalised(spec: TensorSpec) -> tuple[tuple[int, ...], torch.dtype]:
    shape, dtype = spec
    return tuple(int(size) for size in shape), dtype


def _describe(spec: TensorSpec) -> str:
    shape, dtype = _normalised(spec)
    return f"shape {shape} {str(dtype).removeprefix('torch.')}"
