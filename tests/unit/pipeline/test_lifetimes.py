"""Receive order and last uses read from action lists (pure)."""

from __future__ import annotations

import torch

from mimo.pipeline.actions import parse_actions
from mimo.pipeline.held import HeldPeak, tensor_bytes
from mimo.pipeline.lifetimes import last_uses, receive_order


def test_receive_order_follows_the_recv_actions():
    actions = parse_actions("language.1RECV_F0 language.1F0 language.1RECV_F1 language.1F1 language.1B0 "
                            "language.1SEND_B0 language.0RECV_B1")
    assert receive_order(actions) == ([0, 1], [1])


def test_last_use_is_the_last_action_of_each_microbatch():
    actions = parse_actions("language.0F0 language.0SEND_F0 language.0F1 language.0SEND_F1 language.0RECV_B0 "
                            "language.0B0 language.0F2 language.0SEND_F2")
    assert last_uses(actions) == {0: 5, 1: 3, 2: 7}


def test_held_peak_keeps_the_largest_moment_and_counts_shared_tensors_once():
    shared = torch.zeros(4)
    assert tensor_bytes([{"a": shared, "b": shared}, shared, None, torch.zeros(2, dtype=torch.float64)]) == 32
    peak = HeldPeak()
    peak.update(microbatches=2, record_bytes=10, comm_bytes=1)
    peak.update(microbatches=1, record_bytes=2, comm_bytes=20)
    assert (peak.microbatches, peak.record_bytes, peak.comm_bytes, peak.total_bytes) == (2, 10, 20, 22)
