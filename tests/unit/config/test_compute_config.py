"""``train.precision``, ``train.activation_checkpointing`` and their per-module overrides in ``train.modules``."""

from __future__ import annotations

import pytest

from mimo.config import config_from_dict, load_config

MODEL = {"modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {"kind": "vision"}}}}}


def _train(train: dict) -> dict:
    return {"model": MODEL, "train": train}


def test_defaults_are_fp32_without_checkpointing():
    config = config_from_dict(_train({}))
    for module in ("images", "language"):
        compute = config.train.compute_for(module)
        assert (compute.precision, compute.activation_checkpointing, compute.checkpoint_every) == ("fp32", "none", 0)


def test_module_entries_override_the_train_wide_settings_field_by_field():
    config = config_from_dict(_train({
        "precision": "bf16",
        "activation_checkpointing": "full",
        "modules": {"images": {"precision": "fp32"}, "language": {"activation_checkpointing": 2}},
    }))
    images, language = config.train.compute_for("images"), config.train.compute_for("language")
    assert (images.precision, images.checkpoint_every) == ("fp32", 1)  # checkpointing inherited
    assert (language.precision, language.checkpoint_every) == ("bf16", 2)  # precision inherited


def test_null_in_a_module_entry_inherits():
    config = config_from_dict(_train({"precision": "bf16", "modules": {"images": {"precision": None}}}))
    assert config.train.compute_for("images").precision == "bf16"


def test_overrides_reach_module_entries(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  modalities:\n    images: {placeholder_id: 1, encoders: {vit: {kind: vision}}}\n")
    config = load_config(path, ["train.precision=bf16", "train.modules.images.activation_checkpointing=3"])
    assert config.train.compute_for("language").precision == "bf16"
    assert config.train.compute_for("images").checkpoint_every == 3
    assert config.train.compute_for("language").checkpoint_every == 0


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"precision": "fp16"}, r"^train\.precision='fp16' is not one of 'fp32', 'bf16'$"),
        ({"precision": "BF16"}, r"^train\.precision='BF16' is not one of"),
        ({"activation_checkpointing": "half"}, r"activation_checkpointing='half' is not 'none', 'full' or a positive"),
        ({"activation_checkpointing": 0}, r"activation_checkpointing=0 is not 'none', 'full' or a positive integer"),
        ({"activation_checkpointing": -2}, r"activation_checkpointing=-2 is not"),
        ({"activation_checkpointing": True}, r"activation_checkpointing=True is not"),
        ({"modules": {"eyes": {"precision": "bf16"}}},
         r"^train\.modules\.eyes: unknown module 'eyes'; modules are \['images', 'language'\]$"),
        ({"modules": {"images": {"precision": "int8"}}},
         r"^train\.modules\.images\.precision='int8' is not one of 'fp32', 'bf16'$"),
        ({"modules": {"images": {"activation_checkpointing": "some"}}},
         r"^train\.modules\.images: activation_checkpointing='some' is not"),
        ({"modules": {"images": {"dp": 2}}}, r"unknown key 'train\.modules\.images\.dp'"),
    ],
)
def test_bad_values_are_one_error_line_naming_the_value(train, message):
    with pytest.raises(ValueError, match=message) as caught:
        config_from_dict(_train(train))
    assert "\n" not in str(caught.value)
