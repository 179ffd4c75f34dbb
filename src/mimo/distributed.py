"""Process-group start-up and shutdown: gloo on CPU, NCCL on CUDA, picked from the device.

A plain ``python -m mimo train`` runs as one process without any process group; under ``torchrun`` (``WORLD_SIZE``
set in the environment) every process joins the default group.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mimo.errors import CommunicationError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    def synchronize(self) -> None:
        """Wait for this rank's queued compute, so timers measure it (a no-op on CPU).

        Only the current stream: a device-wide synchronize would also wait for posted point-to-point sends, which
        complete only when the peer receives, and two neighbours timing their receives would wait on each other.
        """
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def resolve_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but CUDA is not available on this machine")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto", *, timeout_s: float = 300.0) -> DistributedContext:
    """Join the default process group when launched by torchrun; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistributedContext(rank=rank, world_size=world_size, device=device)


def raise_if_any_rank_failed(error: Exception | None) -> None:
    """Collective: every rank calls it with its own error (or None); if any rank failed, every rank raises.

    A mistake noticed by some ranks only (a checkpoint that does not fit one stage, a data file only data ranks
    read) must stop all of them before the next collective, or the others would block until the timeout.
    The failing rank re-raises its own error; the others raise a ValueError quoting the lowest failing rank.
    """
    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise ValueError(f"rank {rank} failed: {message}")


def shutdown_distributed(*, wait_for_peers: bool = True) -> None:
    """Leave the process group (collect first and meet at a barrier: gloo can abort at exit with live groups)."""
    if dist.is_initialized():
        gc.collect()
        if wait_for_peers:
            try:
                dist.barrier()
            except RuntimeError as error:
                raise CommunicationError(f"a peer died before the final barrier of the run ({error})") from error
            finally:
                dist.destroy_process_group()
        else:
            dist.destroy_process_group()
