"""Small conversation datasets on disk (real digit images, synthetic speech-like WAVs) for data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_conversations", "write_media"]


def write_media(root: Path, *, images: int = 4, clips: tuple[float, ...] = (0.3, 0.5, 0.8)) -> dict[str, list[str]]:
    """``images`` real digit PNGs and one WAV per duration (16 kHz), paths relative to ``root``."""
    import soundfile
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[str]] = {"image": [], "audio": []}
    for index in range(images):
        pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
        name = f"images/digit_{index}.png"
        Image.fromarray(pixels, mode="L").resize((16, 16)).save(root / name)
        paths["image"].append(name)
    rng = np.random.default_rng(0)
    for index, seconds in enumerate(clips):
        samples = int(16000 * seconds)
        wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000) + 0.01 * rng.standard_normal(samples)
        name = f"audio/clip_{index}.wav"
        soundfile.write(root / name, wave.astype(np.float32), 16000)
        paths["audio"].append(name)
    return paths


def write_conversations(path: Path, records: list[dict[str, Any]]) -> Path:
    """Records as JSONL (``.jsonl``) or a JSON list (any other suffix)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path
