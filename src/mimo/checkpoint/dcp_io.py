"""Save and load tensor state dicts with DCP through the safe reader, with errors a user can read.

DCP wraps every failure in ``CheckpointException``, a ``BaseException`` whose text is a traceback per rank;
``load_tensors`` turns it into a ``CheckpointError`` (the first rank's own one if there is one), so callers catch
one error type; the DCP exception stays attached as the cause.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from mimo.checkpoint.errors import CheckpointError
from mimo.checkpoint.safe_reader import SafeFileSystemReader
from mimo.checkpoint.shapes import check_compatible, read_tensor_shapes, require_tensors_only, tensor_specs

__all__ = ["load_tensors", "save_tensors"]


def save_tensors(
    state_dict: Mapping[str, Any], folder: str | os.PathLike[str], *, process_group: dist.ProcessGroup | None = None
) -> None:
    """``dcp.save`` this rank's tensors into ``folder`` (a staging folder); every rank of the group calls it."""
    require_tensors_only(state_dict)
    with _single_process_quiet():
        dcp.save(dict(state_dict), storage_writer=dcp.FileSystemWriter(Path(folder)), process_group=process_group)


def load_tensors(
    state_dict: dict[str, Any],
    checkpoint: str | os.PathLike[str],
    *,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Fill ``state_dict``'s tensors in place from ``checkpoint`` after checking every key's shape and dtype.

    Raises CheckpointError listing every missing or mismatched tensor before anything is read.
    """
    folder = Path(checkpoint)
    check_compatible(tensor_specs(state_dict), read_tensor_shapes(folder), source=f"checkpoint {folder}")
    try:
        with _single_process_quiet():
            dcp.load(state_dict, storage_reader=SafeFileSystemReader(folder), process_group=process_group)
    except CheckpointException as wrapped:
        raise _unwrapped(wrapped, folder) from wrapped


def _unwrapped(wrapped: CheckpointException, folder: Path) -> CheckpointError:
    """The first rank's failure as a CheckpointError (DCP's own exception is not even an ``Exception``)."""
    failures = sorted(wrapped.failures.items())
    for _, (error, _) in failures:
        if isinstance(error, CheckpointError):
            return error
    rank, (error, _) = failures[0]
    return CheckpointError(
        f"loading {folder} failed on rank {rank} (damaged files? CheckpointStore.verify checks them): "
        f"{type(error).__name__}: {error}"
    )


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group: a single process is a supported use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
