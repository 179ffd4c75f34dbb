"""``Timers`` that also put every phase into the trace, so the trainer and ``forward_step`` need no tracing code.

A subclass rather than a flag in ``Timers``: a run without ``train.trace`` keeps the plain class and pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mimo.training.timers import Timers
from mimo.tracing.recorder import TraceRecorder

__all__ = ["TracedTimers"]


@dataclass
class TracedTimers(Timers):
    recorder: TraceRecorder | None = None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.recorder is None:
            with super().__call__(name):
                yield
            return
        with self.recorder.phase(name), super().__call__(name):
            yield
