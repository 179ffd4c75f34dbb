"""Write a trained model back as Hugging Face folders, and read such an export back (``--init-from``).

Each Hugging Face module becomes a ``save_pretrained`` folder that ``AutoModel*.from_pretrained`` loads: the
language model with its tokenizer (placeholder tokens added), each encoder with its processor files. Parts that
are not Hugging Face modules (projections, built-in modules) go to one ``mimo_modules.safetensors`` under their
full mimo names. ``mimo_export.json`` says what is where.

Layers an encoder never built (after its ``feature_layer``) and a Whisper model's decoder were never trained:
they are copied from the source folder, so every exported folder is a complete model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mimo.model.configs import LANGUAGE_MODULE, MimoModelConfig
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.weights_format import EXPORT_METADATA, check_qkv_layout

__all__ = ["MANIFEST", "export_hf", "is_hf_export", "read_hf_export"]

MANIFEST = "mimo_export.json"
OTHER_MODULES = "mimo_modules.safetensors"
_LANGUAGE_PREFIX = f"{LANGUAGE_MODULE}."
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _encoder_prefix(modality: str, encoder: str) -> str:
    return f"modalities.{modality}.encoders.{encoder}."


def _take(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix``, with the prefix removed (and removed from ``weights``)."""
    names = [name for name in weights if name.startswith(prefix)]
    return {name[len(prefix):]: weights.pop(name) for name in names}


def export_hf(weights: dict[str, Tensor], config: MimoModelConfig, out: str | Path) -> Path:
    """Write ``weights`` (the whole model's, mimo names) under ``out``; returns the manifest's path."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--export-hf folder {str(out)!r} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    remaining = dict(weights)
    manifest: dict[str, Any] = {"format": "mimo-hf-export/1", "modules": {}, "other": OTHER_MODULES}
    if isinstance(config.language, HFLanguageConfig):
        _save_language(config, _take(remaining, _LANGUAGE_PREFIX), out / LANGUAGE_MODULE)
        manifest["modules"][_LANGUAGE_PREFIX] = LANGUAGE_MODULE
    for modality_name, modality in config.modalities.items():
        for encoder_name, encoder in modality.encoders.items():
            if isinstance(encoder, HFEncoderConfig):
                folder = f"{modality_name}.{encoder_name}"
                prefix = _encoder_prefix(modality_name, encoder_name)
                _save_encoder(encoder, _take(remaining, prefix), out / folder)
                manifest["modules"][prefix] = folder
    manifest["placeholders"] = {
        name: {"token": m.placeholder, "id": m.token_id} for name, m in config.modalities.items()
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in sorted(remaining.items())}, str(out / OTHER_MODULES),
              metadata=EXPORT_METADATA)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out / MANIFEST


def _save_language(config: MimoModelConfig, state: dict[str, Tensor], folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    language = config.language
    assert isinstance(language, HFLanguageConfig)
    hf_config = AutoConfig.from_pretrained(language.hf)
    hf_config.vocab_size = language.vocab_size
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    expected = set(model.state_dict())
    if language.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # The head is the embedding; save_pretrained writes it once.
        expected.discard("lm_head.weight")
    _require_same_names(expected, set(state), f"language model {language.hf}")
    model.load_state_dict(state, strict=False, assign=True)
    if language.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(folder)
    _save_tokenizer(language, folder)


def _save_tokenizer(language: HFLanguageConfig, folder: Path) -> None:
    from mimo.model.hf.tokenizer import load_tokenizer

    source = Path(language.hf)
    if not (source / "tokenizer_config.json").is_file() and not (source / "tokenizer.json").is_file():
        return
    tokenizer = load_tokenizer(language.hf)
    added = dict(language.added_tokens)  # type: ignore[attr-defined]
    if added:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(text, special=True, normalized=False) for text in added])
        got = {text: tokenizer.convert_tokens_to_ids(text) for text in added}
        if got != added:
            raise RuntimeError(f"the tokenizer numbered the added placeholders {got}, the model uses {added}")
    tokenizer.save_pretrained(folder)


def _save_encoder(encoder: HFEncoderConfig, state: dict[str, Tensor], folder: Path) -> None:
    from transformers import AutoModel

    # The source model supplies what was never trained here (later layers, Whisper's decoder).
    model = AutoModel.from_pretrained(encoder.hf, dtype=torch.float32)
    full = model.state_dict()
    unknown = sorted(set(state) - set(full))
    if unknown:
        raise ValueError(f"encoder {encoder.hf}: trained tensors {unknown[:5]} are not in the source model")
    model.load_state_dict({**full, **{k: v.to(full[k].dtype) for k, v in state.items()}})
    model.save_pretrained(folder)
    for name in _PROCESSOR_FILES:
        if (Path(encoder.hf) / name).is_file():
            shutil.copy2(Path(encoder.hf) / name, folder / name)


def _require_same_names(expected: set[str], got: set[str], what: str) -> None:
    if expected != got:
        raise ValueError(
            f"{what}: the trained weights do not cover the model: missing {sorted(expected - got)[:5]}, "
            f"unexpected {sorted(got - expected)[:5]}"
        )


def is_hf_export(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def read_hf_export(folder: str | Path) -> dict[str, Tensor]:
    """The whole model's tensors under mimo names, from a folder ``export_hf`` wrote."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / MANIFEST} is not readable ({error})") from None
    from mimo.model.hf.weights import WeightFiles

    tensors: dict[str, Tensor] = {}
    for prefix, sub in manifest.get("modules", {}).items():
        files = WeightFiles(folder / sub)
        names = list(files.file_of)
        tensors.update({prefix + name: value for name, value in files.read(names).items()})
        if prefix == _LANGUAGE_PREFIX and f"{prefix}lm_head.weight" not in tensors:
            # A tied model saves the embedding once; the head (last pipeline stage) reads the same tensor.
            tensors[f"{prefix}lm_head.weight"] = tensors[f"{prefix}model.embed_tokens.weight"]
    other = folder / manifest.get("other", OTHER_MODULES)
    if other.is_file():
        rest = load_file(str(other))
        check_qkv_layout(other, rest)
        tensors.update(rest)
    return tensors
