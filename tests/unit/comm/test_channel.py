"""Both ends of a channel derive the same next message size from the messages so far (pure)."""

from __future__ import annotations

import torch

from mimo.comm.channel import ChannelState
from mimo.comm.wire import HEADER_BYTES, Kind, Layout, layout_of


def _specs(rows: int) -> tuple:
    return layout_of({"images": torch.zeros(rows, 8), "images/tokens_per_sample": torch.tensor([rows])})


def _run(rows_per_message: list[int]) -> list[tuple[Kind, int]]:
    """(kind, envelope bytes) of each message, with a sender and a receiver updating separately."""
    sender, receiver = ChannelState(), ChannelState()
    seen = []
    for rows in rows_per_message:
        specs = _specs(rows)
        assert sender.envelope_nbytes() == receiver.envelope_nbytes()
        kind = sender.kind_for(specs)
        seen.append((kind, sender.envelope_nbytes()))
        layout = sender.layout if kind is Kind.INLINE else Layout(specs)
        sender.advance(kind, layout)
        receiver.advance(kind, layout)  # what the receiver reads from the header (and the description)
        assert sender == receiver
    return seen


def test_repeated_layouts_travel_inline_after_the_first_message():
    payload = Layout(_specs(4)).nbytes
    assert _run([4, 4, 4]) == [(Kind.TAIL, HEADER_BYTES), (Kind.INLINE, HEADER_BYTES + payload),
                               (Kind.INLINE, HEADER_BYTES + payload)]


def test_a_changed_layout_costs_one_unused_envelope_then_the_channel_stays_header_only():
    payload = Layout(_specs(4)).nbytes
    assert _run([4, 4, 6, 6, 3]) == [
        (Kind.TAIL, HEADER_BYTES),
        (Kind.INLINE, HEADER_BYTES + payload),
        (Kind.TAIL, HEADER_BYTES + payload),  # the receiver had posted the agreed size
        (Kind.TAIL, HEADER_BYTES),
        (Kind.TAIL, HEADER_BYTES),
    ]
