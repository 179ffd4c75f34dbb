"""write_json / read_json and the problem-list formatting."""

from __future__ import annotations

import json

import pytest

from mimo.checkpoint import CheckpointError, read_json, write_json
from mimo.checkpoint.errors import format_problems


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    value = {"step": 3, "losses": [1.5, 0.25], "nested": {"name": "language"}}
    write_json(tmp_path / "state.json", value)
    assert json.loads((tmp_path / "state.json").read_text()) == value
    assert read_json(tmp_path / "state.json") == value
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


def test_write_json_replaces_an_existing_file(tmp_path):
    write_json(tmp_path / "s.json", {"step": 1})
    write_json(tmp_path / "s.json", {"step": 2})
    assert read_json(tmp_path / "s.json") == {"step": 2}


def test_write_json_of_an_unserialisable_value_names_the_path_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=f"cannot write {tmp_path / 's.json'} as JSON"):
        write_json(tmp_path / "s.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_read_json_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'missing.json'} does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"step": ')
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'broken.json'} is not valid JSON"):
        read_json(tmp_path / "broken.json")
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a folder"):
        read_json(tmp_path)


def test_format_problems_caps_the_list_and_counts_the_rest():
    text = format_problems("head:", [f"p{i}" for i in range(25)], limit=20)
    lines = text.splitlines()
    assert lines[0] == "head:" and lines[1:21] == [f"  p{i}" for i in range(20)]
    assert lines[21:] == ["  and 5 more"]
    assert format_problems("head:", ["only"]) == "head:\n  only"
