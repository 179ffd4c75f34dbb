"""CheckpointStore: staging names, commit, the latest pointer, resolve, list and prune."""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

import pytest

import mimo.checkpoint
from mimo.checkpoint import CheckpointError, CheckpointStore
from tests.unit.checkpoint.helpers import commit_files, write_files


def test_staging_dir_is_a_hidden_folder_named_by_step_and_nonce(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    staging = store.staging_dir(12, "abc123")
    assert staging == tmp_path / "ckpt" / ".tmp-step_00000012-abc123"
    assert staging.is_dir()
    assert store.staging_dir(12, "abc123") == staging  # every rank calls it; the second call is harmless


@pytest.mark.parametrize("step,nonce", [(-1, "a"), (1.0, "a"), (True, "a"), (3, ""), (3, "a/b"), (3, "..")])
def test_staging_dir_rejects_bad_step_or_nonce(tmp_path, step, nonce):
    with pytest.raises(ValueError, match="step|nonce"):
        CheckpointStore(tmp_path).staging_dir(step, nonce)


def test_commit_renames_staging_to_the_step_folder_and_points_latest_at_it(tmp_path):
    store = CheckpointStore(tmp_path)
    final = commit_files(store, 12, {"model.bin": b"weights"})
    assert final == tmp_path / "step_00000012"
    assert (final / "model.bin").read_bytes() == b"weights"
    assert not list(tmp_path.glob(".tmp-*"))
    assert (tmp_path / "latest").read_text() == "step_00000012\n"
    assert store.resolve("latest") == final
    assert store.latest() == final


def test_commit_writes_a_manifest_of_every_file_with_size_and_sha256(tmp_path):
    files = {"a.bin": b"\x00\x01" * 50, "sub/dir/b.json": b'{"x": 1}', "empty": b""}
    final = commit_files(CheckpointStore(tmp_path), 7, files)
    manifest = json.loads((final / "manifest.json").read_text())
    expected = sorted(
        ({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in files.items()),
        key=lambda entry: entry["path"],
    )
    assert manifest == {"format": "mimo-checkpoint", "version": 1, "step": 7, "files": expected}


def test_commit_replaces_an_existing_checkpoint_of_the_same_step(tmp_path):
    store = CheckpointStore(tmp_path)
    commit_files(store, 5, {"a": b"old", "only-old": b"x"}, nonce="first")
    final = commit_files(store, 5, {"a": b"new"}, nonce="second")
    assert (final / "a").read_bytes() == b"new"
    assert not (final / "only-old").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", "step_00000005"]
    assert store.verify(final).files[0].size == 3


def test_commit_points_latest_at_the_newest_commit_even_for_a_lower_step(tmp_path):
    # Resuming from an older checkpoint and saving again: latest follows the run that is going on.
    store = CheckpointStore(tmp_path)
    commit_files(store, 20, {"a": b"1"})
    lower = commit_files(store, 15, {"a": b"2"})
    assert store.resolve("latest") == lower


def test_commit_rejects_a_staging_folder_made_for_another_step(tmp_path):
    store = CheckpointStore(tmp_path)
    staging = store.staging_dir(3, "n")
    with pytest.raises(ValueError, match=r"not a staging folder for step 4 \(expected .tmp-step_00000004-<nonce>\)"):
        store.commit(staging, 4)


def test_commit_rejects_a_staging_folder_outside_the_root(tmp_path):
    elsewhere = CheckpointStore(tmp_path / "other").staging_dir(3, "n")
    with pytest.raises(ValueError, match="must be directly inside the store root"):
        CheckpointStore(tmp_path / "root").commit(elsewhere, 3)


def test_commit_of_a_missing_staging_folder_names_it(tmp_path):
    missing = tmp_path / ".tmp-step_00000003-n"
    with pytest.raises(CheckpointError, match=f"staging folder {missing} does not exist"):
        CheckpointStore(tmp_path).commit(missing, 3)


def test_a_save_interrupted_before_commit_leaves_latest_on_the_previous_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    previous = commit_files(store, 10, {"model.bin": b"step ten"})
    staging = store.staging_dir(20, "crashed")
    write_files(staging, {"model.bin": b"half of step tw"})  # every rank died before the commit
    assert store.resolve("latest") == previous
    assert store.verify(previous).step == 10
    assert store.list_checkpoints() == [(10, previous)]
    with pytest.raises(CheckpointError, match="incomplete checkpoint: .*has no manifest.json"):
        store.verify(staging)
    with pytest.raises(CheckpointError, match="neither a committed checkpoint"):
        store.resolve(staging)


def test_resolve_accepts_a_checkpoint_folder_or_a_root_holding_latest(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    first = commit_files(store, 1, {"a": b"1"})
    second = commit_files(store, 2, {"a": b"2"})
    assert store.resolve(first) == first
    assert store.resolve(str(first)) == first
    assert store.resolve(tmp_path / "store") == second
    assert CheckpointStore(tmp_path / "unrelated").resolve(first) == first


def test_resolve_errors_name_the_path(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'latest'} does not exist"):
        store.resolve("latest")
    with pytest.raises(CheckpointError, match=f"checkpoint path {tmp_path / 'nope'} does not exist"):
        store.resolve(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint folder"):
        store.resolve(tmp_path / "file")


def test_resolve_rejects_latest_naming_a_missing_folder_or_holding_garbage(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match=f"names 'step_00000009', but {tmp_path / 'step_00000009'} does not"):
        store.resolve("latest")
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match=r"holds '../../etc', which is not a checkpoint folder name"):
        store.resolve(tmp_path)


def test_resolve_finds_the_step_folder_when_a_replacing_commit_stopped_before_updating_latest(tmp_path):
    # During a replacing commit latest names the sealed staging folder; the rename may happen just before a crash.
    store = CheckpointStore(tmp_path)
    final = commit_files(store, 3, {"a": b"new"})
    (tmp_path / "latest").write_text(".tmp-step_00000003-abc\n")
    assert store.resolve("latest") == final


def test_latest_is_none_before_the_first_commit(tmp_path):
    assert CheckpointStore(tmp_path / "fresh").latest() is None


def test_list_checkpoints_orders_by_step_and_ignores_other_entries(tmp_path):
    store = CheckpointStore(tmp_path)
    folders = {step: commit_files(store, step, {"a": b"x"}) for step in (100, 9, 123456789)}
    store.staging_dir(200, "n")
    (tmp_path / "step_00000300").write_text("a file, not a checkpoint")
    (tmp_path / "notes").mkdir()
    assert store.list_checkpoints() == [(9, folders[9]), (100, folders[100]), (123456789, folders[123456789])]
    assert CheckpointStore(tmp_path / "missing").list_checkpoints() == []


def test_prune_keeps_the_newest_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path)
    folders = [commit_files(store, step, {"a": bytes([step])}) for step in range(1, 6)]
    removed = store.prune(2)
    assert removed == folders[:3]
    assert store.list_checkpoints() == [(4, folders[3]), (5, folders[4])]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_prune_never_deletes_the_checkpoint_latest_names(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (1, 2, 3):
        commit_files(store, step, {"a": b"x"})
    resumed = commit_files(store, 1, {"a": b"y"}, nonce="again")  # latest is now step 1
    store.prune(1)
    assert [step for step, _ in store.list_checkpoints()] == [1, 3]
    assert store.resolve("latest") == resumed


def test_prune_removes_leftovers_older_than_the_newest_commit_and_keeps_a_save_in_progress(tmp_path):
    store = CheckpointStore(tmp_path)
    final = commit_files(store, 4, {"a": b"x"})
    committed_at = (final / "manifest.json").stat().st_mtime_ns
    stale_tmp = store.staging_dir(3, "crashed")
    stale_old = tmp_path / ".old-step_00000002-zz"
    stale_old.mkdir()
    in_progress = store.staging_dir(6, "live")
    for path, offset in ((stale_tmp, -10**9), (stale_old, -10**9), (in_progress, 10**9)):
        os.utime(path, ns=(committed_at + offset, committed_at + offset))
    assert sorted(store.prune(3)) == sorted([stale_tmp, stale_old])
    assert in_progress.is_dir() and final.is_dir()


def test_prune_without_any_commit_keeps_staging_folders(tmp_path):
    store = CheckpointStore(tmp_path)
    staging = store.staging_dir(1, "n")
    assert store.prune(1) == []
    assert staging.is_dir()


@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_prune_rejects_keep_below_one(tmp_path, keep):
    with pytest.raises(ValueError, match=f"keep must be an integer >= 1, got {keep!r}"):
        CheckpointStore(tmp_path).prune(keep)


class _Crash(Exception):
    pass


def _crash_on_rename(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th os.rename inside the store raise, as if the process died right there."""
    import mimo.checkpoint.store as store_module

    real_rename = os.rename
    calls = {"count": 0}

    def rename(source, target):
        calls["count"] += 1
        if calls["count"] == call:
            raise _Crash(f"crash before renaming {source}")
        real_rename(source, target)

    monkeypatch.setattr(store_module.os, "rename", rename)


def test_a_crash_during_the_first_commit_of_a_step_leaves_latest_on_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    previous = commit_files(store, 1, {"a": b"one"})
    _crash_on_rename(monkeypatch, call=1)  # staging -> step_00000002
    with pytest.raises(_Crash):
        commit_files(store, 2, {"a": b"two"})
    assert store.resolve("latest") == previous
    assert store.verify(previous).step == 1


@pytest.mark.parametrize("call", [1, 2])
def test_a_crash_while_replacing_a_step_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch, call):
    # call 1: before moving the old step_00000002 aside; call 2: after that, before renaming the staging folder.
    store = CheckpointStore(tmp_path)
    commit_files(store, 2, {"a": b"old"}, nonce="first")
    _crash_on_rename(monkeypatch, call=call)
    with pytest.raises(_Crash):
        commit_files(store, 2, {"a": b"new"}, nonce="second")
    monkeypatch.undo()
    resumed = store.resolve("latest")
    assert store.verify(resumed).step == 2
    assert (resumed / "a").read_bytes() == b"new"  # the sealed staging folder is complete
    leftovers = [path for path in tmp_path.iterdir() if path.name.startswith((".tmp-", ".old-"))]
    final = commit_files(store, 3, {"a": b"three"})
    committed_at = (final / "manifest.json").stat().st_mtime_ns
    for path in leftovers:  # older than the newest commit even where file times are coarse
        os.utime(path, ns=(committed_at - 10**9, committed_at - 10**9))
    store.prune(1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", final.name]


def test_the_store_files_do_not_import_torch():
    package = Path(mimo.checkpoint.__file__).parent
    for name in ("store.py", "manifest.py", "atomic.py", "errors.py"):
        tree = ast.parse((package / name).read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        assert not [module for module in imported if module.split(".")[0] == "torch"], name
