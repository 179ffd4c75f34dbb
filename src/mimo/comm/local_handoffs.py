"""Hand-offs between two modules held by the same rank (an encoder colocated with a pipelined language model).

The bridge routes rows by samples, and some routes start and end on the same rank: there the payload is put in
this mailbox instead of a process group (which cannot send a rank to itself). The receiving side takes it out
in the same way it would read a message, so the bridge semantics, the row splits and the autograd cut (the
receiver gets a copy that starts a new graph) are those of a remote hop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["LocalHandoffs"]

Key = tuple[str, str, str]
"""``(direction, sending module, receiving module)``: one FIFO per pair of modules and direction."""


@dataclass
class LocalHandoffs:
    """Per-rank mailbox shared by the communicators of the modules this rank holds."""

    _queues: dict[Key, deque[tuple[int, dict[str, Tensor]]]] = field(default_factory=dict)

    def put(self, direction: str, sender: str, receiver: str, microbatch: int, payload: dict[str, Tensor]) -> None:
        """Hand ``payload`` over; it is copied (detached), as a transfer would copy it."""
        copied = {key: tensor.detach().clone() for key, tensor in payload.items()}
        self._queues.setdefault((direction, sender, receiver), deque()).append((microbatch, copied))

    def take(self, direction: str, sender: str, receiver: str, microbatch: int) -> dict[str, Tensor]:
        """The next hand-off from ``sender`` to ``receiver``, which must be ``microbatch``'s."""
        queue = self._queues.get((direction, sender, receiver))
        if not queue:
            raise RuntimeError(
                f"module {receiver!r}: {direction} of microbatch {microbatch} from module {sender!r} on the same rank "
                "was not handed over yet (the rank's action list receives it before sending it)"
            )
        handed, payload = queue.popleft()
        if handed != microbatch:
            raise RuntimeError(
                f"module {receiver!r}: {direction} from module {sender!r} on the same rank is microbatch {handed}, "
                f"where {microbatch} was expected"
            )
        return payload

    @property
    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for q in self._queues.values() for _, p in q for t in p.values())
