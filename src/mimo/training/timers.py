"""Named wall-clock timers for the phases of a step (data, forward, backward, grad reduction, optimizer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Timers:
    """Accumulates seconds per phase over the run.

    ``synchronize`` is called before each reading so that asynchronous devices (CUDA) are timed honestly;
    on CPU it is a no-op.
    """

    synchronize: Callable[[], None] = lambda: None
    _total: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)

    def add(self, name: str, seconds: float) -> None:
        self._total[name] = self._total.get(name, 0.0) + seconds

    def totals(self) -> dict[str, float]:
        return dict(self._total)

    def report(self) -> str:
        """One line per phase with the total seconds and the share of the timed total."""
        grand_total = sum(self._total.values()) or 1.0
        lines = [
            f"  {name:<12} {seconds:8.2f} s  {100 * seconds / grand_total:5.1f} %"
            for name, seconds in sorted(self._total.items(), key=lambda item: -item[1])
        ]
        return "\n".join(lines)


class _Phase:
    """One timed phase, counted also when its block raises. A small class rather than a ``contextmanager``
    generator: a step opens several per microbatch, and this costs a third as much."""

    __slots__ = ("_name", "_start", "_timers")

    def __init__(self, timers: Timers, name: str) -> None:
        self._timers, self._name, self._start = timers, name, 0.0

    def __enter__(self) -> None:
        self._timers.synchronize()
        self._start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._timers.synchronize()
        self._timers.add(self._name, time.perf_counter() - self._start)
