"""CheckpointStore.verify: every damaged file is reported by name, with the kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimo.checkpoint import CheckpointError, CheckpointStore
from tests.unit.checkpoint.helpers import commit_files

FILES = {"weights.bin": bytes(range(100)), "sub/state.json": b'{"step": 3}'}


@pytest.fixture
def committed(tmp_path: Path) -> tuple[CheckpointStore, Path]:
    store = CheckpointStore(tmp_path)
    return store, commit_files(store, 3, FILES)


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_verify_returns_the_manifest_of_an_intact_checkpoint(committed):
    store, folder = committed
    manifest = store.verify(folder)
    assert manifest.step == 3 and manifest.version == 1
    assert {entry.path: entry.size for entry in manifest.files} == {path: len(data) for path, data in FILES.items()}


def test_verify_names_a_truncated_file(committed):
    store, folder = committed
    (folder / "weights.bin").write_bytes(FILES["weights.bin"][:60])
    with pytest.raises(CheckpointError, match=f"truncated: {folder / 'weights.bin'} has 60 bytes, manifest says 100"):
        store.verify(folder, checksums=False)


def test_verify_names_a_file_that_grew(committed):
    store, folder = committed
    (folder / "weights.bin").write_bytes(FILES["weights.bin"] + b"!")
    with pytest.raises(CheckpointError, match=f"wrong size: {folder / 'weights.bin'} has 101 bytes, manifest says 100"):
        store.verify(folder)


def test_verify_names_a_file_with_a_flipped_byte_unless_checksums_are_off(committed):
    store, folder = committed
    damaged = bytearray(FILES["weights.bin"])
    damaged[41] ^= 0x01
    (folder / "weights.bin").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"corrupted: {folder / 'weights.bin'} has sha256"):
        store.verify(folder)
    assert store.verify(folder, checksums=False).step == 3  # sizes still match


def test_verify_names_a_missing_file(committed):
    store, folder = committed
    (folder / "sub" / "state.json").unlink()
    with pytest.raises(CheckpointError, match=f"missing: {folder / 'sub' / 'state.json'} is listed in the manifest"):
        store.verify(folder)


def test_verify_lists_every_damaged_file(committed):
    store, folder = committed
    (folder / "sub" / "state.json").unlink()
    (folder / "weights.bin").write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        store.verify(folder)
    assert "missing: " in str(caught.value) and "truncated: " in str(caught.value)


def test_verify_accepts_extra_files(committed):
    store, folder = committed
    (folder / "notes.txt").write_text("added later")
    assert store.verify(folder).step == 3


def test_verify_reports_a_missing_manifest_as_an_incomplete_checkpoint(committed):
    store, folder = committed
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint: {folder} has no manifest.json"):
        store.verify(folder)


def test_verify_reports_an_unparseable_manifest_as_an_incomplete_checkpoint(committed):
    store, folder = committed
    (folder / "manifest.json").write_text('{"format": "mimo-checkpoint", "vers')
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint: {folder / 'manifest.json'} is not valid JSON"):
        store.verify(folder)


def test_verify_rejects_an_unknown_manifest_version(committed):
    store, folder = committed
    _rewrite_manifest(folder, version=99)
    with pytest.raises(CheckpointError, match="has manifest version 99; this code reads version 1"):
        store.verify(folder)


def test_verify_rejects_a_json_file_that_is_not_a_manifest(committed):
    store, folder = committed
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a 'mimo-checkpoint' manifest"):
        store.verify(folder)


@pytest.mark.parametrize("bad_path", ["../outside", "/etc/passwd", "", "a/../../b"])
def test_verify_rejects_manifest_paths_that_leave_the_folder(committed, bad_path):
    store, folder = committed
    _rewrite_manifest(folder, files=[{"path": bad_path, "size": 0, "sha256": "0" * 64}])
    with pytest.raises(CheckpointError, match="is not a relative path inside the checkpoint"):
        store.verify(folder)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"path": "a", "size": -1, "sha256": "0" * 64}, "size of a must be a non-negative integer"),
        ({"path": "a", "size": 1, "sha256": "xyz"}, "sha256 of a must be 64 lowercase hex digits"),
        ("a", "every file entry must be an object"),
    ],
)
def test_verify_rejects_malformed_manifest_entries(committed, entry, message):
    store, folder = committed
    _rewrite_manifest(folder, files=[entry])
    with pytest.raises(CheckpointError, match=message):
        store.verify(folder)


def test_verify_rejects_a_manifest_whose_step_differs_from_the_folder_name(committed):
    store, folder = committed
    _rewrite_manifest(folder, step=4)
    with pytest.raises(CheckpointError, match="says step 4, but the folder is step_00000003"):
        store.verify(folder)
