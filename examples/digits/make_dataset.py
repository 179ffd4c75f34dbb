"""Build LLaVA-style conversation data from real handwritten digits (and, with espeak-ng, spoken digits).

    python examples/digits/make_dataset.py --out data/digits [--seed 0] [--image-size 32] [--no-speech]

Images: scikit-learn's 1,797 real 8x8 digit scans (``sklearn.datasets.load_digits``), upscaled with Pillow and
written as grayscale PNGs, with ``train.json`` / ``heldout.json`` (a stratified, seeded split: 20 % of each digit
held out by default). Speech (only where the ``espeak-ng`` program is installed): the ten digit words spoken by
five voices at several speeds and pitches, as 16 kHz mono 16-bit WAVs with the silence around the word trimmed,
with ``speech_train.json`` / ``speech_heldout.json``. Same seed, same files. See README.md next to this script.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DIGIT_WORDS",
    "IMAGE_QUESTIONS",
    "PITCHES",
    "SPEECH_QUESTIONS",
    "SPEECH_SAMPLING_RATE",
    "SPEEDS",
    "VOICES",
    "build_digits",
    "build_speech",
    "espeak_available",
    "main",
    "stratified_split",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_QUESTIONS = (
    "What digit is shown?",
    "Which digit is in this image?",
    "What number is written here?",
    "Read the handwritten digit.",
    "Which digit do you see?",
)
SPEECH_QUESTIONS = (
    "Which digit is spoken?",
    "What number do you hear?",
    "Which digit does the speaker say?",
    "Listen and name the digit.",
)
VOICES = ("en", "en-us", "en-gb-x-rp", "en+f3", "en+m3")
"""espeak-ng voices: British, American and RP English, and two variants (``+f3`` female, ``+m3`` male)."""
SPEEDS = (130, 175, 220)
"""Words per minute (espeak-ng ``-s``; its default is 175)."""
PITCHES = (35, 65)
"""espeak-ng ``-p``, 0-99 (default 50)."""
SPEECH_SAMPLING_RATE = 16000
_TRIM_THRESHOLD = 0.02
"""Trim leading/trailing samples quieter than this fraction of the clip's peak..."""
_TRIM_MARGIN_S = 0.01
"""...keeping this much before and after the word."""


def stratified_split(labels: Sequence[int], heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, heldout)``, both sorted: ``round(fraction * n_c)`` of each class ``c`` held out, at random
    under ``seed`` (numpy's PCG64: the same on every machine)."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    heldout: list[int] = []
    for label in sorted(set(labels_array.tolist())):
        members = np.flatnonzero(labels_array == label)
        count = int(round(heldout_fraction * len(members)))
        heldout += rng.permutation(members)[:count].tolist()
    heldout_set = set(heldout)
    train = [index for index in range(len(labels_array)) if index not in heldout_set]
    return train, sorted(heldout)


def _record(record_id: str, key: str, path: str, placeholder: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": record_id,
        key: path,
        "conversations": [
            {"from": "human", "value": f"{placeholder}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


def build_digits(
    out: Path, *, seed: int = 0, image_size: int = 32, heldout_fraction: float = 0.2, resample: str = "bicubic"
) -> dict[str, list[dict[str, Any]]]:
    """Write ``images/digit_NNNN.png`` (NNNN = index in ``load_digits``), ``train.json`` and ``heldout.json``.

    Pixels: the scan's 0-16 ink values scaled to 0-255 (white ink on black), resized to ``image_size`` square with
    Pillow's ``resample`` filter (``nearest`` or ``bicubic``). Returns ``{"train": [...], "heldout": [...]}``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    filters = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}
    if resample not in filters:
        raise ValueError(f"resample must be one of {sorted(filters)}, got {resample!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    digits = load_digits()
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])  # questions: a stream apart from the split's
    questions = rng.integers(0, len(IMAGE_QUESTIONS), size=len(digits.target))
    records = []
    for index, (scan, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = np.clip(np.round(scan * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((image_size, image_size), filters[resample])
        relative = f"images/digit_{index:04d}.png"
        image.save(out / relative)
        question = IMAGE_QUESTIONS[int(questions[index])]
        records.append(_record(f"digit_{index:04d}", "image", relative, "<image>", question, DIGIT_WORDS[label]))
    train, heldout = stratified_split(digits.target.tolist(), heldout_fraction, seed)
    split = {"train": [records[i] for i in train], "heldout": [records[i] for i in heldout]}
    _write_json(out / "train.json", split["train"])
    _write_json(out / "heldout.json", split["heldout"])
    return split


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on PATH (Debian/Ubuntu: ``apt-get install -y espeak-ng``)."""
    return shutil.which("espeak-ng") is not None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _trim(samples: np.ndarray, rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > _TRIM_THRESHOLD * float(np.abs(samples).max(initial=0.0)))
    if loud.size == 0:
        return samples
    margin = int(round(_TRIM_MARGIN_S * rate))
    return samples[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def _speak(word: str, voice: str, speed: int, pitch: int, target: Path, scratch: Path) -> float:
    """espeak-ng -> trim -> 16 kHz mono PCM_16 at ``target``; returns the duration in seconds."""
    import soundfile
    from scipy.signal import resample_poly

    raw = scratch / (target.stem + ".raw.wav")
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not raw.exists():
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    data, rate = soundfile.read(raw, dtype="float32", always_2d=True)
    raw.unlink()
    samples = _trim(data.mean(axis=1), rate)
    if rate != SPEECH_SAMPLING_RATE:
        divisor = math.gcd(rate, SPEECH_SAMPLING_RATE)
        samples = resample_poly(samples, SPEECH_SAMPLING_RATE // divisor, rate // divisor)
    samples = np.clip(samples, -1.0, 1.0)
    soundfile.write(target, samples, SPEECH_SAMPLING_RATE, subtype="PCM_16")
    return len(samples) / SPEECH_SAMPLING_RATE


def build_speech(
    out: Path,
    *,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    voices: Sequence[str] = VOICES,
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    workers: int = 4,
) -> dict[str, Any]:
    """Write ``audio/<word>_<voice>_s<speed>_p<pitch>.wav``, ``speech_train.json`` and ``speech_heldout.json``.

    Every digit word in every voice, speed and pitch; split stratified by digit under ``seed``. Returns
    ``{"train": [...], "heldout": [...], "durations": {id: seconds}}``. Raises RuntimeError without espeak-ng.
    """
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt-get install -y espeak-ng)")
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (label, word, voice, speed, pitch)
        for label, word in enumerate(DIGIT_WORDS)
        for voice in voices
        for speed in speeds
        for pitch in pitches
    ]
    rng = np.random.default_rng([seed, 2])
    questions = rng.integers(0, len(SPEECH_QUESTIONS), size=len(jobs))
    records, durations = [], {}
    with tempfile.TemporaryDirectory(dir=out) as scratch, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = []
        for label, word, voice, speed, pitch in jobs:
            name = f"{word}_{_slug(voice)}_s{speed}_p{pitch}"
            target = audio_dir / f"{name}.wav"
            futures.append((name, pool.submit(_speak, word, voice, speed, pitch, target, Path(scratch))))
        for position, ((label, word, *_), (name, future)) in enumerate(zip(jobs, futures, strict=True)):
            durations[f"speech_{name}"] = future.result()
            question = SPEECH_QUESTIONS[int(questions[position])]
            records.append(_record(f"speech_{name}", "audio", f"audio/{name}.wav", "<audio>", question, word))
    labels = [label for label, *_ in jobs]
    train, heldout = stratified_split(labels, heldout_fraction, seed)
    split: dict[str, Any] = {"train": [records[i] for i in train], "heldout": [records[i] for i in heldout]}
    _write_json(out / "speech_train.json", split["train"])
    _write_json(out / "speech_heldout.json", split["heldout"])
    split["durations"] = durations
    return split


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and the question wording")
    parser.add_argument("--image-size", type=int, default=32, help="PNG side in pixels (the scans are 8x8)")
    parser.add_argument("--resample", choices=("bicubic", "nearest"), default="bicubic", help="Pillow upscaling")
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="share of each digit held out")
    parser.add_argument("--no-speech", action="store_true", help="skip the spoken digits even with espeak-ng")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    images = build_digits(
        out, seed=args.seed, image_size=args.image_size, heldout_fraction=args.heldout_fraction, resample=args.resample
    )
    print(
        f"images: {len(images['train']) + len(images['heldout'])} PNGs ({args.image_size}x{args.image_size}) in "
        f"{out / 'images'}; {out / 'train.json'} ({len(images['train'])}), {out / 'heldout.json'} "
        f"({len(images['heldout'])}) in {time.perf_counter() - start:.1f} s"
    )
    if args.no_speech:
        print("speech: skipped (--no-speech)")
    elif not espeak_available():
        print("speech: skipped, espeak-ng is not installed (Debian/Ubuntu: apt-get install -y espeak-ng)")
    else:
        start = time.perf_counter()
        speech = build_speech(out, seed=args.seed, heldout_fraction=args.heldout_fraction)
        seconds = list(speech["durations"].values())
        print(
            f"speech: {len(seconds)} WAVs ({SPEECH_SAMPLING_RATE} Hz mono, {min(seconds):.2f}-{max(seconds):.2f} s) "
            f"in {out / 'audio'}; {out / 'speech_train.json'} ({len(speech['train'])}), "
            f"{out / 'speech_heldout.json'} ({len(speech['heldout'])}) in {time.perf_counter() - start:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
