"""Atomic small-file writes (temp file, fsync, rename, fsync the folder) and JSON helpers whose errors name the file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from mimo.checkpoint.errors import CheckpointError

__all__ = ["atomic_write_text", "fsync_dir", "read_json", "write_json"]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text``: readers see the old content or the new one, never a partial file."""
    target = Path(path)
    # A unique name in the target's folder keeps os.replace atomic (same file system) and concurrent writers apart.
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (created, renamed or removed names) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; ValueError naming the path if it is not JSON-able."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot write {path} as JSON: {error}") from None
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value stored in ``path``; CheckpointError naming the path if it is missing or not valid JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a JSON file") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
