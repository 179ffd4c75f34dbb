"""read_tensor_shapes, check_compatible, tensor_specs, require_tensors_only, and save/load_tensors."""

from __future__ import annotations

import pytest
import torch

import mimo.checkpoint.dcp_io as dcp_io
from mimo.checkpoint import (
    CheckpointError,
    check_compatible,
    load_tensors,
    read_tensor_shapes,
    require_tensors_only,
    save_tensors,
    tensor_specs,
)


def test_read_tensor_shapes_reports_global_shapes_and_dtypes(tmp_path):
    state = {
        "model.language.w": torch.zeros(4, 3),
        "model.images.b": torch.zeros(5, dtype=torch.bfloat16),
        "optim.language.step": torch.tensor(2, dtype=torch.int64),
    }
    save_tensors(state, tmp_path)
    expected = {
        "model.language.w": ((4, 3), torch.float32),
        "model.images.b": ((5,), torch.bfloat16),
        "optim.language.step": ((), torch.int64),
    }
    assert read_tensor_shapes(tmp_path) == expected


def test_tensor_specs_flattens_nested_dicts_as_dcp_does(tmp_path):
    state = {"model": {"language": {"w": torch.zeros(2, 2)}}, "x": torch.zeros(3, dtype=torch.int8)}
    assert tensor_specs(state) == {"model.language.w": ((2, 2), torch.float32), "x": ((3,), torch.int8)}
    save_tensors(state, tmp_path)
    assert read_tensor_shapes(tmp_path) == tensor_specs(state)


def test_check_compatible_allows_extra_keys_in_the_checkpoint():
    expected = {"a": ((2,), torch.float32)}
    found = {"a": ([2], torch.float32), "optim.frozen.exp_avg": ((9,), torch.float32)}
    check_compatible(expected, found)


def test_check_compatible_lists_every_mismatch_and_missing_key_sorted():
    expected = {
        "z.weight": ((4, 8), torch.float32),
        "a.weight": ((3,), torch.float32),
        "m.bias": ((2,), torch.bfloat16),
        "ok": ((1,), torch.float32),
    }
    found = {"z.weight": ((4, 16), torch.float32), "m.bias": ((2,), torch.float32), "ok": ((1,), torch.float32)}
    with pytest.raises(CheckpointError) as caught:
        check_compatible(expected, found, source="checkpoint /ck/step_00000003")
    assert str(caught.value).splitlines() == [
        "checkpoint /ck/step_00000003 does not fit the model: 3 of 4 tensors differ or are missing",
        "  a.weight: missing from checkpoint /ck/step_00000003 (expected shape (3,) float32)",
        "  m.bias: expected shape (2,) bfloat16, found shape (2,) float32",
        "  z.weight: expected shape (4, 8) float32, found shape (4, 16) float32",
    ]


def test_check_compatible_caps_the_list():
    expected = {f"p{i:02d}": ((i + 1,), torch.float32) for i in range(25)}
    found = {key: ((99,), torch.float32) for key in expected}
    with pytest.raises(CheckpointError) as caught:
        check_compatible(expected, found)
    lines = str(caught.value).splitlines()
    assert len(lines) == 22 and lines[1].startswith("  p00:") and lines[20].startswith("  p19:")
    assert lines[-1] == "  and 5 more"


def test_require_tensors_only_names_every_non_tensor_leaf():
    state = {"w": torch.zeros(1), "optim": {"lr": 0.1, "groups": [1]}, "step": 3}
    with pytest.raises(ValueError, match="tensors only") as caught:
        require_tensors_only(state)
    assert caught.value.args[0].splitlines()[1:] == ["  optim.lr (float)", "  optim.groups (list)", "  step (int)"]


def test_load_tensors_round_trips_and_fills_in_place(tmp_path):
    saved = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int32)}
    save_tensors(saved, tmp_path)
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.int32)}
    a_storage = target["a"].data_ptr()
    load_tensors(target, tmp_path)
    assert torch.equal(target["a"], saved["a"]) and torch.equal(target["b"], saved["b"])
    assert target["a"].data_ptr() == a_storage


def test_load_tensors_checks_shapes_before_reading_anything(tmp_path):
    save_tensors({"a": torch.ones(3), "b": torch.ones(2)}, tmp_path)
    target = {"a": torch.zeros(3), "b": torch.zeros(4), "c": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} does not fit the model: 2 of 3") as caught:
        load_tensors(target, tmp_path)
    assert "b: expected shape (4,) float32, found shape (2,) float32" in str(caught.value)
    assert "c: missing from checkpoint" in str(caught.value)
    assert torch.equal(target["a"], torch.zeros(3))


def test_load_tensors_reports_a_damaged_shard_as_a_checkpoint_error(tmp_path):
    save_tensors({"a": torch.ones(3)}, tmp_path)
    shard = next(tmp_path.glob("*.distcp"))
    shard.write_bytes(b"\x00" * shard.stat().st_size)
    with pytest.raises(CheckpointError, match=f"loading {tmp_path} failed on rank 0 \\(damaged files"):
        load_tensors({"a": torch.zeros(3)}, tmp_path)


def test_load_tensors_reports_metadata_that_turns_hostile_during_the_load(tmp_path, monkeypatch):
    save_tensors({"a": torch.ones(3)}, tmp_path)
    original_check = dcp_io.check_compatible

    def check_then_swap(*args, **kwargs):
        # The up-front check has read the genuine metadata; DCP's own read then meets a crafted file.
        original_check(*args, **kwargs)
        (tmp_path / ".metadata").write_bytes(b"cbuiltins\neval\n.")

    monkeypatch.setattr(dcp_io, "check_compatible", check_then_swap)
    with pytest.raises(CheckpointError, match="refused to unpickle builtins.eval"):
        load_tensors({"a": torch.zeros(3)}, tmp_path)


def test_save_tensors_refuses_non_tensor_values(tmp_path):
    with pytest.raises(ValueError, match="step \\(int\\)"):
        save_tensors({"w": torch.zeros(1), "step": 3}, tmp_path)
    assert not (tmp_path / ".metadata").exists()
