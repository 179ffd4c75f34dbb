"""Checkpoint folders under one root: staging, atomic commit, the ``latest`` pointer, verification, retention.

Layout::

    <root>/step_00000012/                    a committed checkpoint (holds manifest.json)
    <root>/.tmp-step_00000012-<nonce>/       a save in progress (no manifest until commit)
    <root>/.old-step_00000012-<nonce>/       a replaced or pruned checkpoint on its way out
    <root>/latest                            the name of the most recently committed folder

Only plain file operations happen here; the caller runs the barriers (every rank has written into the staging
folder before one rank calls ``commit``). A crash at any point leaves ``latest`` naming a folder that holds a
complete manifest, or no ``latest`` at all before the first commit.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from mimo.checkpoint.atomic import atomic_write_text, fsync_dir
from mimo.checkpoint.errors import CheckpointError
from mimo.checkpoint.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_files, write_manifest

__all__ = ["LATEST_NAME", "CheckpointStore", "checkpoint_name", "new_nonce"]

LATEST_NAME = "latest"
"""File in the root that holds the name of the most recently committed checkpoint folder."""

_FINAL = re.compile(r"step_(\d{8,})")
_STAGING = re.compile(r"\.tmp-(step_\d{8,})-([A-Za-z0-9_]+)")
_ASIDE = re.compile(r"\.old-(step_\d{8,})-([A-Za-z0-9_]+)")
_NONCE = re.compile(r"[A-Za-z0-9_]+")


def checkpoint_name(step: int) -> str:
    """Folder name of the committed checkpoint of ``step``: ``step_00000012``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
    return f"step_{step:08d}"


def new_nonce() -> str:
    """A fresh random nonce for ``staging_dir``; one rank draws it and broadcasts it to the others."""
    return uuid.uuid4().hex[:16]


class CheckpointStore:
    """The checkpoints under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def staging_dir(self, step: int, nonce: str) -> Path:
        """Create (if needed) and return ``<root>/.tmp-step_XXXXXXXX-<nonce>``; every rank gets the same path."""
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise ValueError(f"staging nonce must be non-empty letters, digits or '_', got {nonce!r}")
        staging = self.root / f".tmp-{checkpoint_name(step)}-{nonce}"
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self, staging: str | os.PathLike[str], step: int) -> Path:
        """Seal ``staging`` (manifest + fsync), rename it to ``step_XXXXXXXX``, point ``latest`` at it; on one rank."""
        staging = self._checked_staging(Path(staging), step)
        write_manifest(staging, step)
        final = self.root / checkpoint_name(step)
        aside = None
        if final.exists():
            # Directories cannot be swapped atomically: latest names the complete staging folder during the swap.
            self._point_latest_to(staging.name)
            aside = self._move_aside(final, _STAGING.fullmatch(staging.name).group(2))
        os.rename(staging, final)
        fsync_dir(self.root)
        self._point_latest_to(final.name)
        if aside is not None:
            shutil.rmtree(aside)
        return final

    def resolve(self, spec: str | os.PathLike[str]) -> Path:
        """The checkpoint folder ``spec`` means: "latest", a checkpoint folder, or a root holding ``latest``."""
        if isinstance(spec, str) and spec == LATEST_NAME:
            return _follow_latest(self.root)
        path = Path(spec)
        if not path.exists():
            raise CheckpointError(f"checkpoint path {path} does not exist")
        if not path.is_dir():
            raise CheckpointError(f"checkpoint path {path} is a file, not a checkpoint folder")
        if (path / MANIFEST_NAME).is_file():
            return path
        if (path / LATEST_NAME).is_file():
            return _follow_latest(path)
        raise CheckpointError(
            f"{path} is neither a committed checkpoint (no {MANIFEST_NAME}; an interrupted save?) "
            f"nor a checkpoint root (no {LATEST_NAME!r} file)"
        )

    def latest(self) -> Path | None:
        """The folder ``latest`` names, or None before the first commit (nothing to resume from)."""
        if not (self.root / LATEST_NAME).exists():
            return None
        return _follow_latest(self.root)

    def verify(self, checkpoint: str | os.PathLike[str], *, checksums: bool = True) -> Manifest:
        """The manifest of ``checkpoint`` after checking every listed file's size (and sha256 if ``checksums``)."""
        folder = Path(checkpoint)
        manifest = read_manifest(folder)
        match = _FINAL.fullmatch(folder.name)
        if match and int(match.group(1)) != manifest.step:
            raise CheckpointError(
                f"{folder / MANIFEST_NAME} says step {manifest.step}, but the folder is {folder.name}"
            )
        verify_files(folder, manifest, checksums=checksums)
        return manifest

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Committed checkpoints as ``(step, folder)``, oldest step first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), path) for path in self.root.iterdir() if (m := _FINAL.fullmatch(path.name))]
        return sorted(item for item in found if item[1].is_dir())

    def prune(self, keep: int) -> list[Path]:
        """Delete all but the ``keep`` highest-step checkpoints, and crash leftovers; return what was deleted.

        The folder ``latest`` names is never deleted. A ``.tmp-*`` or ``.old-*`` folder is a leftover when it was
        last modified before the newest commit (a save still being written is newer than every commit).
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"prune keeps at least one checkpoint; keep must be an integer >= 1, got {keep!r}")
        protected = self._latest_name()
        checkpoints = [path for _, path in self.list_checkpoints()]
        doomed = [path for path in checkpoints[:-keep] if path.name != protected]
        newest_commit = max((_commit_time(path) for path in checkpoints), default=None)
        if newest_commit is not None:
            doomed += [path for path in self._leftovers() if path.name != protected and _mtime(path) < newest_commit]
        for path in doomed:
            # Renaming first makes a half-finished delete look like a leftover rather than a damaged checkpoint.
            if _FINAL.fullmatch(path.name):
                path = self._move_aside(path, new_nonce())
            shutil.rmtree(path)
        return doomed

    def _checked_staging(self, staging: Path, step: int) -> Path:
        name = checkpoint_name(step)
        match = _STAGING.fullmatch(staging.name)
        if match is None or match.group(1) != name:
            raise ValueError(f"{staging} is not a staging folder for step {step} (expected .tmp-{name}-<nonce>)")
        if staging.parent.resolve() != self.root.resolve():
            raise ValueError(f"staging folder {staging} must be directly inside the store root {self.root}")
        if not staging.is_dir():
            raise CheckpointError(f"staging folder {staging} does not exist; nothing was saved for step {step}")
        return staging

    def _move_aside(self, final: Path, nonce: str) -> Path:
        aside = self.root / f".old-{final.name}-{nonce}"
        os.rename(final, aside)
        fsync_dir(self.root)
        return aside

    def _point_latest_to(self, name: str) -> None:
        atomic_write_text(self.root / LATEST_NAME, name + "\n")

    def _latest_name(self) -> str | None:
        pointer = self.root / LATEST_NAME
        return _read_pointer(pointer) if pointer.exists() else None

    def _leftovers(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(path for path in self.root.iterdir() if path.is_dir() and _is_leftover_name(path.name))


def _follow_latest(root: Path) -> Path:
    pointer = root / LATEST_NAME
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {pointer} does not exist")
    name = _read_pointer(pointer)
    folder = root / name
    if folder.is_dir():
        return folder
    staging = _STAGING.fullmatch(name)
    if staging and (root / staging.group(1)).is_dir():
        # A commit that replaced an existing step stopped between renaming the staging folder and updating latest.
        return root / staging.group(1)
    raise CheckpointError(f"{pointer} names {name!r}, but {folder} does not exist")


def _is_leftover_name(name: str) -> bool:
    return bool(_STAGING.fullmatch(name) or _ASIDE.fullmatch(name))


def _read_pointer(pointer: Path) -> str:
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read {pointer}: {error}") from None
    if not (_FINAL.fullmatch(name) or _STAGING.fullmatch(name)):
        raise CheckpointError(f"{pointer} holds {name!r}, which is not a checkpoint folder name like step_00000012")
    return name


def _commit_time(checkpoint: Path) -> int:
    manifest = checkpoint / MANIFEST_NAME
    return _mtime(manifest) if manifest.exists() else _mtime(checkpoint)


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns
