"""Tiny random Hugging Face model folders, written in seconds, for tests and smoke runs without a model hub.

Real checkpoints cannot be downloaded here, yet the loaders must be exercised against genuine Hugging Face
folders (config.json + safetensors + tokenizer/processor files), so we build them: models from small configs
with seeded random weights, a byte-level BPE trained on a built-in English text, and the matching processors.
Every folder reloads offline with ``Auto*.from_pretrained``; the same seed gives byte-identical safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch and transformers load only when models are made, so importing FAMILIES stays cheap
    from torch import nn
    from transformers import PreTrainedTokenizerFast

__all__ = ["FAMILIES", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "make_tiny_models", "make_tiny_tokenizer"]

FAMILIES = ("llama", "qwen2")
Family = Literal["llama", "qwen2"]

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)  # ids 0, 1, 2, in this order (as in SmolLM2)
TOKENIZER_VOCAB_SIZE = 400

# ChatML, as SmolLM2 and Qwen2 use it, without a default system prompt so the tiny prompts stay short.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand"
).split()

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "What digit is shown in the picture? It is a handwritten seven.",
    "Listen to the clip and write down the number that is spoken.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "A model reads the image, hears the audio and answers in plain English.",
    "You are a helpful assistant. Please answer the question briefly.",
    "Once upon a time there was a small robot who liked to count the stars.",
    "She said: one, two, three! Then he replied: four, five, six.",
    "Training runs on many machines; each module has its own parallel layout.",
)


def training_text() -> list[str]:
    """A few hundred lines of English, digits and number words: enough merges for a ~400-token vocabulary."""
    lines = list(_SENTENCES)
    lines += [" ".join(_NUMBER_WORDS)]
    lines += [f"{number} is written as {word}." for number, word in enumerate(_NUMBER_WORDS[:20])]
    lines += [" ".join(str(i * 7 + j) for j in range(10)) for i in range(30)]
    lines += ["0123456789 9876543210 3.14159 2.71828 1,000,000 42% 12:30"]
    return lines


def make_tiny_tokenizer(vocab_size: int = TOKENIZER_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style, like SmolLM2's and Qwen2's) with the ChatML specials, in well under 1 s.

    No ``<image>``/``<audio>`` token: the library adds its own placeholders and must not find them already there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def make_tiny_models(out: Path, *, seed: int = 0, family: Family = "llama") -> dict[str, Path]:
    """Write ``language/``, ``siglip/``, ``clip/`` and ``whisper/`` under ``out``; return their paths by name.

    ``family`` picks the language model: ``llama`` (tied embeddings) or ``qwen2`` (untied, a mix of sliding-window
    and full-attention layers, so code paths that build per-layer masks are exercised).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is a file")
    import torch

    builders: dict[str, Callable[[Path], None]] = {
        "language": lambda folder: _write_language(folder, family),
        "siglip": _write_siglip,
        "clip": _write_clip,
        "whisper": _write_whisper,
    }
    paths: dict[str, Path] = {}
    for offset, (name, build) in enumerate(builders.items()):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        # Each model is seeded afresh, so changing one builder leaves the others' weights alone; fork_rng leaves
        # the caller's global RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + offset)
            build(folder)
        paths[name] = folder
    return paths


def _save(model: nn.Module, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per tiny file is noise
    try:
        model.eval()
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_language(folder: Path, family: Family) -> None:
    tokenizer = make_tiny_tokenizer()
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    sizes = {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
    }
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**sizes, **special, tie_word_embeddings=True, dtype="float32"))
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(
            **sizes, **special, tie_word_embeddings=False, use_sliding_window=True, sliding_window=16,
            max_window_layers=2, dtype="float32",
        )  # layers 0-1 full attention, 2-3 sliding
        model = Qwen2ForCausalLM(config)
    _save(model, folder)
    tokenizer.save_pretrained(folder)


def _write_siglip(folder: Path) -> None:
    # The PIL processors need no torchvision and save the same "SiglipImageProcessor" type the full ones do.
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, dtype="float32",
    )
    _save(SiglipVisionModel(config), folder)
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)


def _write_clip(folder: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, projection_dim=32, dtype="float32",
    )
    _save(CLIPVisionModel(config), folder)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)


def _write_whisper(folder: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    # The encoder's two convolutions halve the frames: 32 mel frames -> 16 positions. One second of 16 kHz audio
    # with a 500-sample hop gives exactly those 32 frames.
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=0, decoder_start_token_id=1,
        suppress_tokens=None, begin_suppress_tokens=None, dtype="float32",
    )
    _save(WhisperModel(config), folder)
    WhisperFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=500, chunk_length=1, n_fft=1024
    ).save_pretrained(folder)
