"""Point-to-point channels on two gloo processes: exact shapes and dtypes, one message per repeated hop, layout
changes, receives posted ahead, bounded sends, and a mismatch reported instead of reinterpreted bytes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mimo.comm.p2p import Inbox, Outbox, WireError
from tests.distributed.launcher import run_ranks

pytestmark = pytest.mark.distributed

CPU = torch.device("cpu")


def _payload(rows: int = 5, seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(rows, 8, generator=generator),
        "images/tokens_per_sample": torch.tensor([2, 0, rows - 2]),
        "ambiguous": torch.randn(4, 3, 1, generator=generator),  # upstream rejects [a, b, 1] as ambiguous
        "empty": torch.zeros(0, 8),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "mask": torch.tensor([[True, False, True]]),
        "half": torch.randn(2, 3, generator=generator).to(torch.bfloat16),
        "strided": torch.arange(12, dtype=torch.int32).reshape(3, 4).t(),  # not contiguous: packing copies it
    }


# Rows per microbatch: repeated (one message per hop), then changing (the channel turns to two per hop).
ROWS = [5, 5, 5, 7, 3, 3]


def _exchange(rank: int, world_size: int) -> str:
    if rank == 0:
        out = Outbox(1, None, max_in_flight=2)
        for microbatch, rows in enumerate(ROWS):
            out.send(_payload(rows, seed=microbatch), microbatch)
            assert out.in_flight <= 2  # older hops were completed and their buffers dropped
        out.wait_all()
        assert out.in_flight == 0 and out.held_bytes == 0
        back = Inbox(1, None, CPU)
        grad = back.receive(0)
        assert list(grad) == ["grad"] and torch.equal(grad["grad"], torch.ones(5, 8))
    else:
        inbox = Inbox(0, None, CPU)
        inline = []
        for microbatch, rows in enumerate(ROWS):
            inline.append(inbox.state.inline)
            inbox.post(microbatch)  # ahead of need: the sender's data can flow before receive() is called
            received = inbox.receive(microbatch)
            expected = _payload(rows, seed=microbatch)
            assert list(received) == list(expected)
            for key, tensor in expected.items():
                assert received[key].dtype == tensor.dtype and received[key].shape == tensor.shape, key
                assert torch.equal(received[key], tensor), key
        # First hop announces the layout; repeats are inline; after a change the channel stays two-message.
        assert inline == [False, True, True, True, False, False], inline
        out = Outbox(0, None)
        out.send({"grad": torch.ones(5, 8)}, 0)
        out.wait_all()
    return "ok"


def test_dicts_round_trip_with_exact_shapes_and_dtypes(tmp_path):
    assert run_ranks(2, _exchange, tmp_path=tmp_path, timeout_s=60) == ["ok", "ok"]


def _mismatch(rank: int, world_size: int) -> str:
    if rank == 0:
        out = Outbox(1, None)
        out.send({"x": torch.ones(2)}, 0)
        out.send({"x": torch.ones(2)}, 1)
        out.wait_all()
        return "sent"
    inbox = Inbox(0, None, CPU)
    inbox.receive(0)
    try:
        inbox.receive(3)  # the sender sent microbatch 1
    except WireError as error:
        return str(error)
    return "no error"


def test_a_receiver_expecting_another_microbatch_gets_an_error_not_data(tmp_path):
    sent, message = run_ranks(2, _mismatch, tmp_path=tmp_path, timeout_s=60)
    assert sent == "sent"
    assert "microbatch 1 where 3 was expected" in message


def _world_groups(rank: int, world_size: int) -> str:
    # Two groups to one peer are two channels: their messages never mix.
    first, second = dist.new_group([0, 1]), dist.new_group([0, 1])
    if rank == 0:
        a, b = Outbox(1, first), Outbox(1, second)
        b.send({"b": torch.full((3,), 2.0)}, 0)
        a.send({"a": torch.full((2,), 1.0)}, 0)
        a.wait_all()
        b.wait_all()
        return "ok"
    a, b = Inbox(0, first, CPU), Inbox(0, second, CPU)
    a.post(0)
    b.post(0)
    assert torch.equal(a.receive(0)["a"], torch.full((2,), 1.0))
    assert torch.equal(b.receive(0)["b"], torch.full((3,), 2.0))
    return "ok"


def test_channels_on_separate_groups_are_independent(tmp_path):
    assert run_ranks(2, _world_groups, tmp_path=tmp_path, timeout_s=60) == ["ok", "ok"]
