"""examples/digits/make_dataset.py: real digit scans (and espeak-ng speech) into LLaVA-style JSON + media."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("sklearn")
soundfile = pytest.importorskip("soundfile")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "digits" / "make_dataset.py"
NUM_DIGITS = 1797


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_make_dataset", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/typing look modules up by name
    spec.loader.exec_module(module)
    return module


make_dataset = _load_script()
espeak_missing = pytest.mark.skipif(
    not make_dataset.espeak_available(), reason="espeak-ng not installed (apt-get install -y espeak-ng)"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert make_dataset.main(["--out", str(out), "--seed", "3"]) == 0
    return out


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def _check_split(train: list[dict], heldout: list[dict], total: int, key: str, placeholder: str) -> None:
    assert len(train) + len(heldout) == total
    ids_train, ids_heldout = {r["id"] for r in train}, {r["id"] for r in heldout}
    assert len(ids_train) == len(train) and len(ids_heldout) == len(heldout) and not ids_train & ids_heldout
    per_class_train, per_class_heldout = Counter(map(_answer, train)), Counter(map(_answer, heldout))
    assert sorted(per_class_train) == sorted(per_class_heldout) == sorted(make_dataset.DIGIT_WORDS)
    for word, held in per_class_heldout.items():  # stratified: round(20 %) of each digit held out
        assert held == round(0.2 * (held + per_class_train[word])), word
    for record in train + heldout:
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt" and gpt["value"] in make_dataset.DIGIT_WORDS
        assert human["value"].startswith(f"{placeholder}\n") and human["value"].count(placeholder) == 1
        assert set(record) == {"id", key, "conversations"}


def test_image_set(built: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    out = built
    train, heldout = _read(out / "train.json"), _read(out / "heldout.json")
    _check_split(train, heldout, NUM_DIGITS, "image", "<image>")
    assert len(heldout) == 359
    targets = load_digits().target
    questions = set()
    for record in train + heldout:
        path = out / record["image"]
        assert path.is_file() and record["image"] == f"images/{record['id']}.png"
        assert _answer(record) == make_dataset.DIGIT_WORDS[targets[int(record["id"].split("_")[1])]]
        questions.add(record["conversations"][0]["value"])
    assert len(questions) == len(make_dataset.IMAGE_QUESTIONS)  # the wording varies
    assert len(list((out / "images").iterdir())) == NUM_DIGITS
    for record in train[:50] + heldout[:50]:
        with Image.open(out / record["image"]) as image:
            image.load()
            assert image.size == (32, 32) and image.mode == "L"


def test_split_is_deterministic_and_seeded() -> None:
    labels = [i % 7 for i in range(300)]
    first = make_dataset.stratified_split(labels, 0.2, seed=5)
    assert first == make_dataset.stratified_split(labels, 0.2, seed=5)
    assert first != make_dataset.stratified_split(labels, 0.2, seed=6)
    train, heldout = first
    assert sorted(train + heldout) == list(range(300)) and not set(train) & set(heldout)
    with pytest.raises(ValueError, match="heldout_fraction"):
        make_dataset.stratified_split(labels, 1.0, seed=0)


def test_images_are_the_same_for_the_same_seed(built: Path, tmp_path: Path) -> None:
    out = built
    assert make_dataset.main(["--out", str(tmp_path), "--seed", "3", "--no-speech"]) == 0
    for name in ("train.json", "heldout.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "images/digit_0007.png").read_bytes() == (out / "images/digit_0007.png").read_bytes()
    assert not (tmp_path / "speech_train.json").exists()


def test_the_media_loader_reads_the_images(built: Path) -> None:
    from mimo.data.conversations.media import MediaLoader
    from mimo.model.configs import VisionEncoderConfig

    out = built
    loader = MediaLoader(VisionEncoderConfig(image_size=16, patch_size=4, num_channels=1))
    record = _read(out / "heldout.json")[0]
    assert loader.load_image(out / record["image"]).shape == (1, 16, 16)


@espeak_missing
def test_speech_set(built: Path) -> None:
    from mimo.data.conversations.media import MediaLoader
    from mimo.model.configs import AudioEncoderConfig

    out = built
    train, heldout = _read(out / "speech_train.json"), _read(out / "speech_heldout.json")
    total = len(make_dataset.DIGIT_WORDS) * len(make_dataset.VOICES) * len(make_dataset.SPEEDS) * len(
        make_dataset.PITCHES
    )
    _check_split(train, heldout, total, "audio", "<audio>")
    loader = MediaLoader(AudioEncoderConfig(num_mel_bins=16, max_frames=100))  # 10 ms frames: up to 1 s
    for record in train + heldout:
        path = out / record["audio"]
        info = soundfile.info(str(path))
        assert info.samplerate == 16000 and info.channels == 1 and 0.1 < info.duration < 1.0, path.name
        assert loader.frames_of(path) == math.ceil(info.frames / 160)
    assert loader.load_audio(out / train[0]["audio"]).shape[0] == loader.frames_of(out / train[0]["audio"])
    assert len(list((out / "audio").iterdir())) == total  # no scratch files left


def test_speech_is_skipped_cleanly_without_espeak(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(make_dataset.shutil, "which", lambda name: None)
    assert make_dataset.main(["--out", str(tmp_path)]) == 0
    assert "speech: skipped, espeak-ng is not installed" in capsys.readouterr().out
    assert (tmp_path / "train.json").is_file() and not (tmp_path / "audio").exists()
    with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
        make_dataset.build_speech(tmp_path)
