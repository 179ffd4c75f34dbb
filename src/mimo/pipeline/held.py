"""How much a stage holds during a step: the runner's per-microbatch tensors plus the communicator's buffers.

1F1B promises that a stage holds at most its in-flight microbatches (warmup + 1), however many microbatches a
step has. These counters make that checkable (``StageRunner(measure_held=True)``): after every action the
runner adds up the bytes of the tensors its records reference and the bytes of the buffers its communicator
holds (sends in flight, receives posted ahead), and keeps the peak. The autograd graph a record keeps alive is
not counted: it lives exactly as long as the record's output, which the record count covers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["HeldPeak", "tensor_bytes"]


@dataclass
class HeldPeak:
    """The largest values seen after any action of one step."""

    microbatches: int = 0
    """Microbatches with a record (inputs, output or gradients) held by the runner."""
    record_bytes: int = 0
    comm_bytes: int = 0
    total_bytes: int = 0
    """Largest ``record_bytes + comm_bytes`` at one moment (not the sum of the two peaks)."""

    def update(self, *, microbatches: int, record_bytes: int, comm_bytes: int) -> None:
        self.microbatches = max(self.microbatches, microbatches)
        self.record_bytes = max(self.record_bytes, record_bytes)
        self.comm_bytes = max(self.comm_bytes, comm_bytes)
        self.total_bytes = max(self.total_bytes, record_bytes + comm_bytes)


def tensor_bytes(values: Iterable[Tensor | dict[str, Tensor] | None]) -> int:
    """Bytes of the distinct tensors among ``values`` (tensors, dicts of tensors, Nones)."""
    seen: set[int] = set()
    total = 0
    for value in values:
        tensors = value.values() if isinstance(value, dict) else () if value is None else (value,)
        for tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
