"""Named wall-clock timers for the phases of a step (data, forward, backward, grad reduction, optimizer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timers:
    """Accumulates seconds per phase over the run.

    ``synchronize`` is called before each reading so that asynchronous devices (CUDA) are timed honestly;
    on CPU it is a no-op.
    """

    synchronize: Callable[[], None] = lambda: None
    _total: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            elapsed = time.perf_counter() - start
            self._total[name] = self._total.get(name, 0.0) + elapsed

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
