"""Shared helpers for the checkpoint tests: commit a folder of given files in one call."""

from __future__ import annotations

from pathlib import Path

from mimo.checkpoint import CheckpointStore


def commit_files(store: CheckpointStore, step: int, files: dict[str, bytes], *, nonce: str = "n0") -> Path:
    """Stage ``files`` (relative path -> content) for ``step`` and commit them; return the final folder."""
    staging = store.staging_dir(step, nonce)
    write_files(staging, files)
    return store.commit(staging, step)


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
