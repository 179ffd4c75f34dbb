"""The run config: YAML files, --set overrides, cross-field validation, per-module optimizer inheritance."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimo.config import apply_override, config_from_dict, load_config
from tests.hf_fixtures import shipped_recipe, tiny_hf_models  # noqa: F401

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_recipe_loads(name, tiny_hf_models, tmp_path):
    config = load_config(shipped_recipe(CONFIGS / name, tiny_hf_models, tmp_path))
    assert config.train.steps >= 1


def test_overrides_are_parsed_as_yaml_and_reach_nested_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 5\n")
    config = load_config(path, ["train.steps=7", "optim.freeze=[language]", "optim.default.lr=0.5"])
    assert config.train.steps == 7
    assert config.optim.freeze == ["language"]
    assert config.optim.default.lr == 0.5


def test_module_optimizer_entries_inherit_from_the_default():
    config = config_from_dict({
        "optim": {"default": {"name": "sgd", "lr": 0.1}, "modules": {"language": {"lr": 0.01}}},
    })
    assert config.optim.for_module("language").name == "sgd"
    assert config.optim.for_module("language").lr == 0.01
    assert config.optim.for_module("images").lr == 0.1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [1, 2", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping at the top level"),
        ("trian:\n  steps: 3\n", "unknown key 'trian'"),
        ("train:\n  steps: 0\n", "train: steps must be >= 1, got 0"),
        ("train:\n  global_batch_size: 6\n  num_microbatches: 4\n", r"global_batch_size \(6\) must be divisible"),
        ("optim:\n  freeze: [eyes]\n", "optim.freeze entry 'eyes' is not a module"),
        ("optim:\n  modules:\n    eyes: {lr: 1}\n", "optim.modules.eyes: unknown module 'eyes'"),
        ("optim:\n  default:\n    name: adam\n", "optim.default.name='adam' is not one of 'adamw', 'sgd'"),
    ],
)
def test_bad_files_raise_errors_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["train.steps", "=3", "train..steps=3"])
def test_malformed_overrides_are_rejected(override):
    with pytest.raises(ValueError, match="must look like key.subkey=value"):
        apply_override({}, override)


def test_override_through_a_scalar_is_rejected():
    with pytest.raises(ValueError, match="holds 5, not a mapping"):
        apply_override({"train": 5}, "train.steps=3")


@pytest.mark.parametrize("name", ["im/g", "a:b", "9lives", "x" * 21, ""])
def test_module_names_that_cannot_be_keys_are_rejected(name):
    raw = {"model": {"modalities": {name: {"placeholder_id": 1, "encoders": {"vit": {"kind": "vision"}}}}}}
    with pytest.raises(ValueError, match="must be 1-20 letters, digits or '_'"):
        config_from_dict(raw)
    raw = {"model": {"modalities": {"images": {"placeholder_id": 1, "encoders": {name: {"kind": "vision"}}}}}}
    with pytest.raises(ValueError, match="encoder name"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("projection", "message"),
    [
        ({"input_size": 17}, r"projection.input_size=17 does not fit: its encoders \(vit\) emit rows of width 16"),
        ({"output_size": 31}, r"projection.output_size=31 does not fit: the language model's hidden size is 32"),
        ({"kind": "linear", "hidden_size": 8}, "applies to kind 'mlp' only"),
    ],
)
def test_a_projection_that_does_not_fit_is_named(projection, message):
    raw = {"model": {
        "language": {"vocab_size": 48, "hidden_size": 32, "num_layers": 2, "num_heads": 4},
        "modalities": {"images": {"placeholder_id": 1, "projection": projection, "encoders": {
            "vit": {"kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}},
    }}
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)


def test_a_linear_projection_is_one_layer_sized_from_the_configs():
    from mimo.model import MimoModel

    raw = {"model": {
        "language": {"vocab_size": 48, "hidden_size": 32, "num_layers": 2, "num_heads": 4},
        "modalities": {"images": {"placeholder_id": 1, "projection": {"kind": "linear", "input_size": 16},
                                  "encoders": {"vit": {"kind": "vision", "image_size": 8, "patch_size": 4,
                                                       "hidden_size": 16, "num_heads": 2}}}},
    }}
    model = MimoModel(config_from_dict(raw).model)
    shapes = {n: tuple(p.shape) for n, p in model.modalities["images"].projection.named_parameters()}
    assert shapes == {"0.weight": (32, 16), "0.bias": (32,)}


@pytest.mark.parametrize(
    ("module", "tp", "message"),
    [
        ("language", 3, r"^model.language: tp=3 does not divide num_heads=4 \(nor mlp width=256\)$"),
        ("images", 4, r"^model.modalities.images.encoders.vit: tp=4 does not divide num_heads=2$"),
        ("language", 0, r"^layout.language.tp must be a positive integer, got 0$"),
    ],
)
def test_a_tp_that_does_not_split_the_module_is_refused_before_launch(module, tp, message):
    raw = {
        "model": {"language": {"num_heads": 4, "hidden_size": 64},
                  "modalities": {"images": {"placeholder_id": 1,
                                            "encoders": {"vit": {"kind": "vision", "num_heads": 2}}}}},
        "layout": {"images": {"tp": 1}, "language": {"tp": 1, "rank_offset": 1}},
    }
    raw["layout"][module]["tp"] = tp
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)
