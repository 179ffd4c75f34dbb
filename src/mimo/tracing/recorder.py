"""Records what one rank does, as spans on the machine's monotonic clock, for the steps of the trace window.

Why spans on ``time.monotonic_ns``: on Linux (and macOS, Windows) the monotonic clock is one system-wide clock,
so the ranks of one machine need no alignment at all, and it never jumps with NTP. Ranks on several machines
have unrelated monotonic clocks: each rank also notes one ``(monotonic, wall)`` pair at start, and the merge
(``files.merge_parts``) moves every rank onto the wall clock with it, which aligns machines only as well as
their NTP does (typically well under a millisecond on one network, but compare it with the spans you read).

Cost: tracing off means no recorder at all (the runner and timers hold ``None``); outside the window a span is
one attribute test. Nothing here imports torch.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from mimo.pipeline.actions import Action

__all__ = ["Lane", "Span", "TraceRecorder", "clock_origin"]

PART_FORMAT = "mimo-trace-part/1"
_NOTHING: AbstractContextManager[None] = nullcontext()


class Lane(IntEnum):
    """The Chrome trace ``tid`` of a span: spans of one lane never overlap except by nesting."""

    STEP = 0
    """The step, and the phases around the pipeline: grad-reduce, optimizer, validation, checkpoint."""
    ACTIONS = 1
    """The schedule's actions (F, B, SEND_*, RECV_*); forward/backward phases when there is no pipeline."""
    DATA = 2
    """Loading a microbatch (inside a forward)."""


LANE_OF_PHASE = {"data": Lane.DATA, "forward": Lane.ACTIONS, "backward": Lane.ACTIONS}


class Span(NamedTuple):
    name: str
    lane: int
    start_ns: int
    end_ns: int
    args: dict[str, Any]


def clock_origin() -> dict[str, Any]:
    """This process's clock identity: one ``(monotonic, wall)`` pair, the host and its boot id.

    The merge keeps the monotonic clock when every rank shares host and boot (one clock), else uses the pair.
    """
    before, wall, after = time.monotonic_ns(), time.time_ns(), time.monotonic_ns()
    boot = Path("/proc/sys/kernel/random/boot_id")
    return {
        "monotonic_ns": (before + after) // 2,
        "wall_ns": wall,
        "host": socket.gethostname(),
        "boot_id": boot.read_text().strip() if boot.is_file() else None,
    }


class _OpenSpan:
    """One span being timed; appended to the recorder when it closes (also when its block raises)."""

    __slots__ = ("_recorder", "_name", "_lane", "_args", "_start")

    def __init__(self, recorder: TraceRecorder, name: str, lane: int, args: dict[str, Any]) -> None:
        self._recorder, self._name, self._lane, self._args = recorder, name, lane, args
        self._start = 0

    def __enter__(self) -> None:
        self._recorder.synchronize()
        self._start = time.monotonic_ns()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._recorder.synchronize()
        self._recorder.spans.append(Span(self._name, self._lane, self._start, time.monotonic_ns(), self._args))


class TraceRecorder:
    """One rank's spans for the steps ``window[0]..window[1]``.

    ``phases``: the ``Timers`` names worth a span (those inside actions are left out when actions are traced).
    ``synchronize``: waits for queued device work at both ends of every span, so GPU spans are honest (stream
    local: see ``DistributedContext.synchronize``); a no-op on CPU.
    """

    def __init__(self, rank: int, window: tuple[int, int], *, phases: Collection[str],
                 synchronize: Callable[[], None] | None = None) -> None:
        self.rank, self.window = rank, window
        self.phases = frozenset(phases)
        self.synchronize: Callable[[], None] = synchronize or (lambda: None)
        self.origin = clock_origin()
        self.spans: list[Span] = []
        self.step = 0
        self.recording = False
        self._index = 0

    def begin_step(self, step: int) -> None:
        """Attribute what follows to ``step``; record it only inside the window."""
        self.step, self._index = step, 0
        self.recording = self.window[0] <= step <= self.window[1]

    def step_span(self) -> AbstractContextManager[None]:
        """The whole optimizer step on this rank."""
        if not self.recording:
            return _NOTHING
        return _OpenSpan(self, "step", Lane.STEP, {"step": self.step})

    def action(self, action: Action) -> AbstractContextManager[None]:
        """One action of the schedule; ``index`` is its position among the step's recorded actions."""
        if not self.recording:
            return _NOTHING
        args = {"module": action.module, "stage": action.stage, "kind": str(action.kind),
                "microbatch": action.microbatch, "step": self.step, "index": self._index}
        self._index += 1
        return _OpenSpan(self, str(action), Lane.ACTIONS, args)

    def phase(self, name: str) -> AbstractContextManager[None]:
        """A named phase from ``Timers`` (data, grad-reduce, optimizer, ...)."""
        if not self.recording or name not in self.phases:
            return _NOTHING
        return _OpenSpan(self, name, LANE_OF_PHASE.get(name, Lane.STEP), {"step": self.step})

    def part(self, **extra: Any) -> dict[str, Any]:
        """This rank's part of the trace as plain JSON data (see ``files.merge_parts``)."""
        return {"format": PART_FORMAT, "rank": self.rank, "window": list(self.window), "clock": self.origin,
                "spans": [list(span) for span in self.spans], **extra}
