"""Run a function on several CPU processes joined in a gloo group, with a hard deadline.

Each rank's return value comes back to the caller; an exception on any rank fails the test with that rank's
traceback; a rank that is still running at the deadline gets every process killed, so a hang costs seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class RankFailed(AssertionError):
    pass


def run_ranks(
    world_size: int,
    fn: Callable[..., Any],
    *args: Any,
    tmp_path: Path,
    timeout_s: float = 90.0,
    collective_timeout_s: float = 30.0,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` processes; return the results ordered by rank."""
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    store = tmp_path / f"store-{fn.__name__}"
    processes = [
        context.Process(
            target=_entry, args=(rank, world_size, str(store), collective_timeout_s, fn, args, results), daemon=True
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        _collect(results, outcomes, world_size, timeout_s)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    failures = {rank: detail for rank, (status, detail) in outcomes.items() if status == "error"}
    if failures:
        rank, detail = min(failures.items())
        raise RankFailed(f"rank {rank} of {world_size} failed:\n{detail}")
    return [outcomes[rank][1] for rank in range(world_size)]


def _collect(results: mp.Queue, outcomes: dict, world_size: int, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while len(outcomes) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(set(range(world_size)) - set(outcomes))
            raise RankFailed(f"ranks {missing} did not finish within {timeout_s} s (hang?); outcomes so far: {outcomes}")
        try:
            rank, status, detail = results.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        outcomes[rank] = (status, pickle.loads(detail) if status == "ok" else detail)
        if status == "error":
            return  # no need to wait for the peers of a failed rank: they may be blocked on it


def _entry(
    rank: int,
    world_size: int,
    store_path: str,
    collective_timeout_s: float,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: mp.Queue,
) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store_path}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=collective_timeout_s),
        )
        value = fn(rank, world_size, *args)
        # Plain pickle: the queue's own pickler would share tensors through file descriptors that vanish when
        # this process exits before the parent reads them (seen under load as FileNotFoundError).
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
