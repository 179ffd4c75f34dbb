"""The manifest of a checkpoint folder: every file with its size and sha256, written last, checked on load.

``manifest.json`` is the commit marker: a folder without one is an interrupted save. Its JSON form is
``{"format": "mimo-checkpoint", "version": 1, "step": 12, "files": [{"path", "size", "sha256"}, ...]}`` with
paths relative to the folder, "/"-separated and sorted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mimo.checkpoint.atomic import fsync_dir, read_json, write_json
from mimo.checkpoint.errors import CheckpointError, format_problems

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "Manifest",
    "ManifestEntry",
    "file_sha256",
    "read_manifest",
    "verify_files",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
"""File name of the manifest at the top of a checkpoint folder."""
MANIFEST_FORMAT = "mimo-checkpoint"
"""Value of the manifest's ``"format"`` key."""
MANIFEST_VERSION = 1
"""The manifest layout version this code writes and reads."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a checkpoint: its path relative to the folder ("/"-separated), size in bytes and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a committed checkpoint folder holds."""

    step: int
    files: tuple[ManifestEntry, ...]
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        files = [{"path": entry.path, "size": entry.size, "sha256": entry.sha256} for entry in self.files]
        return {"format": MANIFEST_FORMAT, "version": self.version, "step": self.step, "files": files}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: Path) -> str:
    """Hex sha256 of a file, or of a folder's files (relative names and contents, in name order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def write_manifest(folder: Path, step: int) -> Manifest:
    """Hash every file under ``folder``, write ``manifest.json`` into it and fsync the folder tree."""
    entries = []
    for path in _files_under(folder):
        relative = path.relative_to(folder).as_posix()
        entries.append(ManifestEntry(relative, path.stat().st_size, file_sha256(path)))
    manifest = Manifest(step=step, files=tuple(entries))
    write_json(folder / MANIFEST_NAME, manifest.to_json())
    # The writers fsync their files; the folders' entries (the files' names) must reach the disk as well.
    for directory, _, _ in os.walk(folder):
        fsync_dir(directory)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """The manifest of ``folder``; CheckpointError naming the path if it is missing, unparseable or unknown."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {folder} has no {MANIFEST_NAME} (the save did not finish)")
    try:
        raw = read_json(path)
    except CheckpointError as error:
        raise CheckpointError(f"incomplete checkpoint: {error}") from None
    return _manifest_from_json(raw, path)


def verify_files(folder: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Raise CheckpointError listing every listed file that is missing, has the wrong size or wrong sha256."""
    problems = [problem for entry in manifest.files if (problem := _file_problem(folder, entry, checksums))]
    if problems:
        raise CheckpointError(format_problems(f"checkpoint {folder} is damaged:", problems))


def _file_problem(folder: Path, entry: ManifestEntry, checksums: bool) -> str | None:
    path = folder / entry.path
    if not path.is_file():
        return f"missing: {path} is listed in the manifest but does not exist"
    size = path.stat().st_size
    if size != entry.size:
        kind = "truncated" if size < entry.size else "wrong size"
        return f"{kind}: {path} has {size} bytes, manifest says {entry.size}"
    if checksums:
        found = file_sha256(path)
        if found != entry.sha256:
            return f"corrupted: {path} has sha256 {found}, manifest says {entry.sha256}"
    return None


def _files_under(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the manifest itself, in a stable order."""
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        found.extend(Path(directory) / name for name in sorted(names))
    return [path for path in found if path != folder / MANIFEST_NAME]


def _manifest_from_json(raw: Any, path: Path) -> Manifest:
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"incomplete checkpoint: {path} is not a {MANIFEST_FORMAT!r} manifest")
    version = raw.get("version")
    if version != MANIFEST_VERSION:
        raise CheckpointError(f"{path} has manifest version {version!r}; this code reads version {MANIFEST_VERSION}")
    step = raw.get("step")
    if not _is_count(step):
        raise CheckpointError(f"{path}: step must be a non-negative integer, got {step!r}")
    files = raw.get("files")
    if not isinstance(files, list):
        raise CheckpointError(f"{path}: 'files' must be a list, got {type(files).__name__}")
    return Manifest(step=step, files=tuple(_entry_from_json(item, path) for item in files), version=version)


def _entry_from_json(item: Any, path: Path) -> ManifestEntry:
    if not isinstance(item, dict):
        raise CheckpointError(f"{path}: every file entry must be an object, got {item!r}")
    relative, size, sha256 = item.get("path"), item.get("size"), item.get("sha256")
    # A listed path must stay inside the folder: verification never looks outside the checkpoint.
    if not isinstance(relative, str) or not _is_inside(relative):
        raise CheckpointError(f"{path}: file path {relative!r} is not a relative path inside the checkpoint")
    if not _is_count(size):
        raise CheckpointError(f"{path}: size of {relative} must be a non-negative integer, got {size!r}")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise CheckpointError(f"{path}: sha256 of {relative} must be 64 lowercase hex digits, got {sha256!r}")
    return ManifestEntry(relative, size, sha256)


def _is_inside(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return bool(parts) and not PurePosixPath(relative).is_absolute() and ".." not in parts and "\\" not in relative


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
