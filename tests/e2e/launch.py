"""Start ``python -m mimo ...`` as one process or as N ranks (without torchrun), watch it, signal it, reap it.

Every rank is a separate process in its own session with the environment torchrun would give it (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), its stdout and stderr in files, so a test can
send a signal to one rank, kill another, and read what each printed. Everything is bounded: waits take a deadline
and fail with every rank's output, and leaving the ``with`` block kills whatever is still running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.05
LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """A TCP port that was free a moment ago (rank 0's store binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The environment of one rank; a single process gets no ``WORLD_SIZE`` and so runs without a process group."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # One thread per process: ranks share 2 cores, and runs compared bit for bit must use the same thread count.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if world_size > 1:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


class Ranks:
    """The processes of one launch of ``python -m mimo <args>``; use as a context manager."""

    def __init__(self, args: Sequence[str], *, world_size: int = 1, log_dir: Path, name: str = "run") -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.args, self.world_size, self.name = list(args), world_size, name
        self.log_dir = Path(log_dir)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Ranks:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.kill()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        command = [sys.executable, "-m", "mimo", *self.args]
        for rank in range(self.world_size):
            with self._log(rank, "out").open("wb") as out, self._log(rank, "err").open("wb") as err:
                # A session of its own: a signal meant for pytest never reaches a rank, and vice versa.
                self.processes.append(subprocess.Popen(command, cwd=ROOT, env=rank_env(rank, self.world_size, port),
                                                       stdout=out, stderr=err, start_new_session=True))

    def _log(self, rank: int, stream: str) -> Path:
        return self.log_dir / f"{self.name}.rank{rank}.{stream}"

    def stdout(self, rank: int = 0) -> str:
        return self._log(rank, "out").read_text(errors="replace")

    def stderr(self, rank: int = 0) -> str:
        return self._log(rank, "err").read_text(errors="replace")

    def send_signal(self, sig: int, ranks: Sequence[int] | None = None) -> None:
        """Send ``sig`` to the given ranks (default: all), as a scheduler does; exited ranks are skipped."""
        for rank in range(self.world_size) if ranks is None else ranks:
            process = self.processes[rank]
            if process.poll() is None:
                process.send_signal(sig)

    def exit_codes(self) -> list[int | None]:
        return [process.poll() for process in self.processes]

    def wait(self, timeout_s: float, ranks: Sequence[int] | None = None) -> list[int]:
        """Exit codes of ``ranks`` (default: all) once they all exit; past ``timeout_s`` kill every rank and fail."""
        chosen = list(range(self.world_size)) if ranks is None else list(ranks)
        self.wait_for(lambda: all(self.processes[r].poll() is not None for r in chosen), timeout_s,
                      f"ranks {chosen} to exit", allow_exit=True)
        return [self.processes[rank].returncode for rank in chosen]

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str, *,
                 allow_exit: bool = False) -> None:
        """Poll ``condition`` until it holds; fail (after killing every rank) at the deadline, or as soon as a rank
        exits while ``allow_exit`` is false (the condition can then never come true)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            exited = [rank for rank, code in enumerate(self.exit_codes()) if code is not None]
            if exited and not allow_exit:
                self._fail(f"ranks {exited} exited while waiting for {what}")
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(POLL_S)

    def kill(self) -> None:
        """SIGKILL every rank that is still running and reap it (bounded)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # a SIGKILLed process that outlives 10 s is stuck in the kernel; nothing more can be done

    def report(self) -> str:
        """Every rank's exit code and the tail of its output, for failure messages."""
        parts = [f"launch {self.name!r}: python -m mimo {' '.join(self.args)}"]
        for rank, code in enumerate(self.exit_codes()):
            parts.append(f"--- rank {rank}: exit code {code}")
            parts.append(f"stdout:\n{self.stdout(rank)[-LOG_TAIL_CHARS:]}")
            parts.append(f"stderr:\n{self.stderr(rank)[-LOG_TAIL_CHARS:]}")
        return "\n".join(parts)

    def _fail(self, message: str) -> None:
        self.kill()
        raise AssertionError(f"{message}\n{self.report()}")


def run_to_end(args: Sequence[str], *, world_size: int = 1, log_dir: Path, name: str,
               timeout_s: float = 90.0) -> Ranks:
    """Run a launch to completion and insist every rank exits 0."""
    with Ranks(args, world_size=world_size, log_dir=log_dir, name=name) as ranks:
        codes = ranks.wait(timeout_s)
        assert codes == [0] * world_size, f"exit codes {codes}\n{ranks.report()}"
    return ranks


def read_metrics(run_dir: Path) -> list[dict]:
    """The complete lines of ``<run_dir>/metrics.jsonl`` (a line still being written is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last piece has no newline yet (or is empty)
    return [json.loads(line) for line in lines]


def latest_step(checkpoint_root: Path) -> int | None:
    """The step of the checkpoint ``<root>/latest`` names, or None before the first commit."""
    pointer = Path(checkpoint_root) / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name.startswith("step_"):
        raise AssertionError(f"{pointer} holds {name!r}, not a committed checkpoint name")
    return int(name.removeprefix("step_"))
