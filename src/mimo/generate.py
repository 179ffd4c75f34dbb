"""``mimo generate``: greedy answers from a checkpoint's model, for looking at what it learned.

The prompt goes through the same chat template and media preprocessing as training data; each step runs the
whole sequence again (no cache: this is for inspection, not serving).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mimo.data.collate import collate
from mimo.data.conversations.dataset import build_chat_tokenizer, kind_of_modalities
from mimo.data.conversations.media import MediaError, MediaLoader
from mimo.data.conversations.records import DEFAULT_MARKERS, Turn
from mimo.model import MimoModel
from mimo.model.configs import MimoModelConfig

__all__ = ["generate", "generate_from_checkpoint"]


def generate_from_checkpoint(
    checkpoint: str | Path, prompt: str, *, images: Sequence[str] = (), audio: Sequence[str] = (),
    max_new_tokens: int = 32,
) -> str:
    from mimo.training.checkpoint_export import load_checkpoint_model

    cfg, model = load_checkpoint_model(checkpoint)
    return generate(model, cfg.model, prompt, images=images, audio=audio, max_new_tokens=max_new_tokens)


@torch.no_grad()
def generate(
    model: MimoModel, config: MimoModelConfig, prompt: str, *, images: Sequence[str] = (),
    audio: Sequence[str] = (), max_new_tokens: int = 32,
) -> str:
    """The model's greedy answer to one user message with ``images`` and ``audio`` (markers in ``prompt``, or
    put at its start as LLaVA does)."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    modality_of = kind_of_modalities(config)
    media = {"image": list(images), "audio": list(audio)}
    for kind, paths in media.items():
        if paths and kind not in modality_of:
            raise ValueError(f"the model has no {kind} modality; it takes {sorted(modality_of) or 'text only'}")
    markers = {kind: DEFAULT_MARKERS[kind] for kind in modality_of}  # type: ignore[index]
    text = prompt
    for kind, paths in media.items():
        if paths and markers[kind] not in text:
            text = markers[kind] * len(paths) + "\n" + text
        if text.count(markers.get(kind, "\0")) != len(paths):
            raise ValueError(f"the prompt has {text.count(markers[kind])} {markers[kind]} markers for "
                             f"{len(paths)} {kind} file(s)")
    loaders = {kind: MediaLoader(next(iter(config.modalities[m].encoders.values()))) for kind, m in modality_of.items()}
    item_tokens = _item_tokens(text, markers, media, loaders)
    tokenizer = build_chat_tokenizer(config, markers)
    ids, stop_ids = tokenizer.prompt([Turn("user", text)], item_tokens)
    sample = {"modality_inputs": {}}
    for kind, modality in modality_of.items():
        encoder = next(iter(config.modalities[modality].encoders))
        try:
            sample["modality_inputs"][modality] = {encoder: loaders[kind].encoder_inputs(media[kind])}
        except MediaError as error:
            raise ValueError(str(error)) from None
    modality_inputs = collate([sample])["modality_inputs"]
    model.eval()
    answer: list[int] = []
    for _ in range(max_new_tokens):
        input_ids = torch.tensor([ids + answer])
        positions = torch.arange(input_ids.shape[1])[None]
        logits = model.logits(input_ids=input_ids, position_ids=positions, modality_inputs=modality_inputs)
        token = int(logits[0, -1].argmax())
        if token in stop_ids:
            break
        answer.append(token)
    return tokenizer.decode_answer(answer)


def _item_tokens(text: str, markers: dict[str, str], media: dict[str, list[str]],
                 loaders: dict[str, MediaLoader]) -> list[int]:
    """Rows of each marker occurrence, in text order (the k-th marker of a kind is that kind's k-th file)."""
    found = sorted((position, kind) for kind, marker in markers.items()
                   for position in _positions(text, marker))
    next_item = {kind: 0 for kind in markers}
    counts = []
    for _, kind in found:
        path = media[kind][next_item[kind]]
        next_item[kind] += 1
        try:
            counts.append(loaders[kind].tokens_of(path))
        except MediaError as error:
            raise ValueError(str(error)) from None
    return counts


def _positions(text: str, marker: str) -> list[int]:
    positions, start = [], text.find(marker)
    while start >= 0:
        positions.append(start)
        start = text.find(marker, start + len(marker))
    return positions
