"""Dict and tensor point-to-point with the shape/dtype handshake, on two gloo processes."""

from __future__ import annotations

import pytest
import torch

from mimo.comm.p2p import SendQueue, recv_dict, recv_tensor, send_dict, send_tensor
from tests.distributed.launcher import run_ranks

pytestmark = pytest.mark.distributed


def _payloads() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "images": torch.randn(5, 8, generator=generator),
        "images/tokens_per_sample": torch.tensor([2, 0, 3]),
        "ambiguous": torch.randn(4, 3, 1, generator=generator),  # upstream rejects [a, b, 1] as ambiguous
        "empty": torch.zeros(0, 8),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "mask": torch.tensor([[True, False]]),
        "half": torch.randn(2, 2, generator=generator).to(torch.bfloat16),
    }


def _exchange(rank: int, world_size: int) -> str:
    queue = SendQueue()
    if rank == 0:
        send_dict(queue, _payloads(), dst=1)
        send_tensor(queue, torch.arange(6).reshape(1, 2, 3), dst=1)
        queue.wait_all()
        back = recv_dict(1, device=torch.device("cpu"))
        assert list(back) == ["grad"] and torch.equal(back["grad"], torch.ones(5, 8))
    else:
        received = recv_dict(0, device=torch.device("cpu"))
        expected = _payloads()
        assert list(received) == list(expected)
        for key, tensor in expected.items():
            assert received[key].dtype == tensor.dtype and received[key].shape == tensor.shape, key
            assert torch.equal(received[key], tensor), key
        assert torch.equal(recv_tensor(0, device=torch.device("cpu")), torch.arange(6).reshape(1, 2, 3))
        send_dict(queue, {"grad": torch.ones(5, 8)}, dst=0)
        queue.wait_all()
    return "ok"


def test_dicts_round_trip_with_exact_shapes_and_dtypes(tmp_path):
    assert run_ranks(2, _exchange, tmp_path=tmp_path, timeout_s=60) == ["ok", "ok"]
