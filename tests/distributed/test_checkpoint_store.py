"""Two gloo ranks save different tensors into one staging folder; one commit; both load any tensor back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mimo.checkpoint import CheckpointStore, load_tensors, new_nonce, read_json, save_tensors, write_json
from tests.distributed.launcher import run_ranks

pytestmark = pytest.mark.distributed


def _tensor(key: str, step: int) -> torch.Tensor:
    """A value the parent can recompute: depends only on the key's length and the step."""
    return torch.arange(6, dtype=torch.float32).reshape(2, 3) * len(key) + step


OWNED = {0: ["model.language.w", "optim.language.w.exp_avg"], 1: ["model.images.w"]}


def _save_commit_load(rank: int, world_size: int, root: str) -> dict:
    store = CheckpointStore(Path(root))
    for step in (1, 2):
        nonce = [new_nonce() if rank == 0 else None]
        dist.broadcast_object_list(nonce, src=0)
        staging = store.staging_dir(step, nonce[0])
        save_tensors({key: _tensor(key, step) for key in OWNED[rank]}, staging)
        if rank == 0:
            write_json(staging / "train_state.json", {"step": step})
        dist.barrier()  # every rank has written its part before the commit
        if rank == 0:
            store.commit(staging, step)
        dist.barrier()
    checkpoint = store.resolve("latest")
    every_key = sorted(key for keys in OWNED.values() for key in keys)
    # Each rank loads every tensor, including the other rank's: a layout change on load works the same way.
    loaded = {key: torch.zeros(2, 3) for key in every_key}
    load_tensors(loaded, checkpoint)
    return {"checkpoint": checkpoint.name, "state": read_json(checkpoint / "train_state.json"), "loaded": loaded}


def test_two_ranks_save_one_commit_and_load_everything_back(tmp_path):
    root = tmp_path / "ckpt"
    results = run_ranks(2, _save_commit_load, str(root), tmp_path=tmp_path)
    store = CheckpointStore(root)
    assert [step for step, _ in store.list_checkpoints()] == [1, 2]
    manifest = store.verify(root / "step_00000002")
    assert any(entry.path == ".metadata" for entry in manifest.files)
    for result in results:
        assert result["checkpoint"] == "step_00000002" and result["state"] == {"step": 2}
        for key, value in result["loaded"].items():
            assert torch.equal(value, _tensor(key, 2)), key
