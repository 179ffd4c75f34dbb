"""The step's scalars after its one world-wide reduction: where each sits in the reduced vector.

``Trainer._reduce_step`` lays them out as ``[loss_sum, num_tokens, squared norm per module, stop requested,
non-finite flag per microbatch, seconds waited per rank, tokens per module, parameters per module]``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StepTotals"]


@dataclass(frozen=True)
class StepTotals:
    """The step's scalars after the one world-wide sum (see ``Trainer._reduce_step``).

    ``values`` is the reduced vector as Python floats (one ``tolist`` of the host copy): indexing a list costs
    nanoseconds where each read of a tensor element costs microseconds, and the float64 values are the same.
    """

    values: list[float]
    num_modules: int
    num_microbatches: int

    @property
    def loss_sum(self) -> float:
        return self.values[0]

    @property
    def num_tokens(self) -> int:
        return int(self.values[1])

    @property
    def squared_norms(self) -> list[float]:
        return self.values[2 : 2 + self.num_modules]

    @property
    def stop_requested(self) -> bool:
        return self.values[2 + self.num_modules] > 0

    @property
    def first_nonfinite_microbatch(self) -> int:
        """The earliest microbatch with a non-finite loss on any rank, or -1."""
        start = 3 + self.num_modules
        flags = self.values[start : start + self.num_microbatches]
        return next((microbatch for microbatch, flag in enumerate(flags) if flag != 0), -1)

    @property
    def _after_waits(self) -> int:
        return len(self.values) - 2 * self.num_modules

    @property
    def waited_s(self) -> list[float]:
        """Seconds each rank spent waiting for its peers' transfers this step."""
        return self.values[3 + self.num_modules + self.num_microbatches : self._after_waits]

    @property
    def module_tokens(self) -> list[int]:
        """Tokens (text positions, encoder rows) each module processed this step."""
        return [int(v) for v in self.values[self._after_waits : self._after_waits + self.num_modules]]

    @property
    def module_parameters(self) -> list[int]:
        """Parameters of each whole module (its stages' replica 0 summed)."""
        return [int(v) for v in self.values[self._after_waits + self.num_modules :]]
