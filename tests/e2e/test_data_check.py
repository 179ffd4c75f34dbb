"""``mimo data check`` lists every broken record with its id and exits non-zero; training with
``data.on_bad_sample: skip`` on the same file completes and reports how many it left out."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conversation_fixtures import write_conversations, write_media
from tests.e2e.test_cli import mimo

pytestmark = pytest.mark.e2e
pytest.importorskip("soundfile")
pytest.importorskip("sklearn")


def _turns(question: str = "<image>\nWhich digit?", answer: str = "seven") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_every_broken_record_is_listed_and_skip_trains_without_them(tmp_path):
    media = write_media(tmp_path, images=3)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "notes.txt").write_text("not an image")
    good = [{"id": f"good{i}", "image": media["image"][i % 3], "conversations": _turns()} for i in range(6)]
    broken = {
        "missing_file": {"image": "images/absent.png", "conversations": _turns()},
        "corrupt_image": {"image": "images/corrupt.png", "conversations": _turns()},
        "not_an_image": {"image": "notes.txt", "conversations": _turns()},
        "two_markers_one_image": {"image": media["image"][0], "conversations": _turns("<image><image> which?")},
        "unknown_role": {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]},
        "empty_conversation": {"conversations": []},
        "no_conversations": {"image": media["image"][0]},
        "absolute_path": {"image": str(tmp_path / "images" / "digit_0.png"), "conversations": _turns()},
        "escaping_path": {"image": "../elsewhere.png", "conversations": _turns()},
        "no_answer": {"conversations": [{"from": "human", "value": "hello?"}]},
        "text_not_string": {"conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "x"}]},
        "too_long": {"conversations": _turns("Which digit? " * 60, "seven")},
        "audio_in_image_model": {"audio": media["audio"][0], "conversations": _turns("<audio> what?")},
    }
    records = good + [{"id": key, **value} for key, value in broken.items()]
    write_conversations(tmp_path / "train.json", records)
    config = {
        "run_dir": str(tmp_path / "run"),
        "model": {
            "language": {"vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 128},
            "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
                "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}},
        },
        "data": {"source": "conversations", "path": str(tmp_path / "train.json"), "max_seq_length": 96,
                 "overlong": "drop"},
        "train": {"steps": 2, "global_batch_size": 2, "num_microbatches": 1, "progress": False},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))

    checked = mimo("data", "check", "--config", str(recipe), timeout=120)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    problems = [line for line in checked.stdout.splitlines() if line.strip().startswith("problem:")]
    for record_id in broken:
        assert sum(f"record {record_id}" in line for line in problems) == 1, (record_id, checked.stdout)
    assert len(problems) == len(broken)
    assert "6 usable samples" in checked.stdout and f"{len(broken)} problem(s)" in checked.stdout
    assert json.loads((tmp_path / "train.json").read_text()) == records  # nothing changed on disk

    stopped = mimo("train", "--config", str(recipe), timeout=120)
    assert stopped.returncode == 2 and "on_bad_sample=error" in stopped.stderr, stopped.stderr

    trained = mimo("train", "--config", str(recipe), "--set", "data.on_bad_sample=skip", timeout=120)
    assert trained.returncode == 0, trained.stderr
    assert f"{len(broken)} not usable" in trained.stdout + trained.stderr
