"""Samples stored in a file: ``save_samples`` writes one, ``FileDataset`` reads it back.

A samples file is ``torch.save`` of ``{"format": "mimo-samples", "version": 1, "samples": [sample, ...]}``
where each sample is in the format of ``mimo.data.format``. Reading uses ``weights_only=True`` (never
unpickles arbitrary objects) and ``mmap=True``, so ranks on one machine share the file's pages instead of each
holding a private copy of every tensor.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mimo.data.format import Sample, select_fields
from mimo.data.stored_samples import prepare_samples
from mimo.model.configs import MimoModelConfig

__all__ = ["FILE_FORMAT", "FILE_VERSION", "FileDataset", "save_samples"]

FILE_FORMAT = "mimo-samples"
"""Value of the ``"format"`` key that marks a samples file."""
FILE_VERSION = 1
"""The layout version this code writes and reads."""


def save_samples(
    samples: Sequence[Sample], path: str | os.PathLike[str], *, model_config: MimoModelConfig | None = None
) -> Path:
    """Write ``samples`` to ``path`` (parents created) and return it; the file appears whole or not at all.

    Tensors are stored detached, on the CPU and compacted (a view of a larger tensor does not drag the rest
    along). Every sample must have the format's keys, tensor leaves, long text ids, a float loss mask and
    the same seq_length; with ``model_config``, each must also pass ``validate_sample``. Raises ValueError
    ``"sample {i}: {reason}"`` before anything is written.
    """
    if not samples:
        raise ValueError("save_samples got no samples; a samples file needs at least one")
    prepared, _ = prepare_samples(samples, model_config, _storable)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_whole({"format": FILE_FORMAT, "version": FILE_VERSION, "samples": prepared}, target)
    return target


class FileDataset(Dataset[Sample]):
    """Map-style dataset over a samples file; every sample is validated against ``model_config`` on load."""

    def __init__(self, path: str | os.PathLike[str], model_config: MimoModelConfig) -> None:
        self.path = Path(path)
        self.model_config = model_config
        stored = _stored_samples(self.path, _load_payload(self.path))
        try:
            self._samples, self.seq_length = prepare_samples(stored, model_config, _unchanged)
        except ValueError as error:
            raise ValueError(f"{self.path}: {error}") from None
        if self.seq_length > model_config.language.max_seq_len:
            raise ValueError(
                f"{self.path}: samples have seq_length {self.seq_length}, more than language.max_seq_len "
                f"({model_config.language.max_seq_len})"
            )

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self.load_sample(index)

    def load_sample(
        self, index: int, *, modalities: Collection[str] | None = None, include_text: bool = True
    ) -> Sample:
        """Sample ``index`` with only ``modalities`` (None = all) and, optionally, the text fields.

        The tensors are copies, so a caller that edits them in place leaves the dataset unchanged.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)} samples ({self.path})")
        if modalities is not None:
            unknown = sorted(set(modalities) - set(self.model_config.modalities))
            if unknown:
                raise ValueError(f"unknown modalities {unknown}; the model has {list(self.model_config.modalities)}")
        selected = select_fields(self._samples[index], modalities=modalities, include_text=include_text)
        return _copy_tree(selected)


def _storable(tensor: Tensor) -> Tensor:
    """A detached CPU tensor that owns exactly its own elements."""
    tensor = tensor.detach().cpu()
    owns_storage = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    if owns_storage and tensor.is_contiguous():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _unchanged(tensor: Tensor) -> Tensor:
    return tensor


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_tree(item) for key, item in value.items()}
    return value.clone()


def _write_whole(payload: dict[str, Any], target: Path) -> None:
    """``torch.save`` into a temporary file next to ``target``, then rename it onto ``target``."""
    # A unique name in the same directory keeps the rename atomic and lets concurrent writers not collide;
    # os.open with mode 0o666 honours the umask (mkstemp would leave the file readable by its owner only).
    temp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _load_payload(path: Path) -> object:
    if not path.exists():
        raise ValueError(f"{path}: no such samples file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a samples file is written by mimo.data.save_samples)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a mimo samples file (not a torch.save archive; write it with save_samples)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UnpicklingError:
        raise ValueError(
            f"{path}: not a mimo samples file: it holds Python objects other than tensors, dicts, lists and "
            f"numbers, which a safe load (torch.load weights_only=True) refuses"
        ) from None
    except Exception as error:  # torch.load raises many types for a damaged archive
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path}: not a mimo samples file: torch.load failed ({type(error).__name__}: "
                         f"{first_line[:200]})") from None


def _stored_samples(path: Path, payload: object) -> list[object]:
    """The sample list of a loaded payload, after checking its format, version and size."""
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a mimo samples file: it holds a {type(payload).__name__}, expected a dict "
                         f"with format {FILE_FORMAT!r}")
    if payload.get("format") != FILE_FORMAT:
        found = f"format {payload['format']!r}" if "format" in payload else f"no 'format' key (keys {list(payload)})"
        raise ValueError(f"{path}: not a mimo samples file: it has {found}, expected format {FILE_FORMAT!r}")
    version = payload.get("version")
    if type(version) is not int or version != FILE_VERSION:
        raise ValueError(f"{path}: samples file version {version!r} is not supported; this mimo reads version "
                         f"{FILE_VERSION}")
    samples = payload.get("samples")
    if not isinstance(samples, list | tuple):
        raise ValueError(f"{path}: 'samples' must be a list of sample dicts, got a {type(samples).__name__}")
    if not samples:
        raise ValueError(f"dataset {path} is empty: the file holds no samples")
    return list(samples)
