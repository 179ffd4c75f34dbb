"""Action text form and its parser."""

from __future__ import annotations

import pytest

from mimo.pipeline.actions import Action, ActionKind, format_actions, parse_action, parse_actions


@pytest.mark.parametrize(
    ("action", "text"),
    [
        (Action("language", 1, ActionKind.F, 3), "language.1F3"),
        (Action("images", 0, ActionKind.SEND_F, 2), "images.0SEND_F2"),
        (Action("audio", 12, ActionKind.RECV_B, 10), "audio.12RECV_B10"),
        (Action("images2", 0, ActionKind.B, 0), "images2.0B0"),
        (Action("vision.tower", 3, ActionKind.SEND_B, 7), "vision.tower.3SEND_B7"),
        (Action("language", 0, ActionKind.RECV_F, 1), "language.0RECV_F1"),
    ],
)
def test_action_text_round_trip(action: Action, text: str) -> None:
    assert str(action) == text
    assert parse_action(text) == action


@pytest.mark.parametrize("text", ["language1F3", "language.F3", "language.1X3", "language.1F", ".1F3", "a b.1F3", ""])
def test_malformed_action_names_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"malformed action {text!r}"):
        parse_action(text)


def test_rank_list_round_trip_with_spaces_or_commas() -> None:
    actions = [
        Action("images", 0, ActionKind.F, 0),
        Action("images", 0, ActionKind.SEND_F, 0),
        Action("images", 0, ActionKind.RECV_B, 0),
        Action("images", 0, ActionKind.B, 0),
    ]
    assert format_actions(actions) == "images.0F0 images.0SEND_F0 images.0RECV_B0 images.0B0"
    assert parse_actions(format_actions(actions)) == actions
    assert parse_actions(format_actions(actions, separator=", ")) == actions
    assert parse_actions("  images.0F0,images.0SEND_F0\n images.0RECV_B0 , images.0B0 ") == actions
    assert parse_actions("") == []


def test_kind_predicates() -> None:
    assert {kind for kind in ActionKind if kind.is_compute} == {ActionKind.F, ActionKind.B}
    assert {kind for kind in ActionKind if kind.is_send} == {ActionKind.SEND_F, ActionKind.SEND_B}
    assert {kind for kind in ActionKind if kind.is_recv} == {ActionKind.RECV_F, ActionKind.RECV_B}
