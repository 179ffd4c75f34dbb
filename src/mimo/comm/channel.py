"""What the two ends of one point-to-point channel agree on, so that a hop is one message when shapes repeat.

A channel is one direction between two ranks on one process group (activations to one peer, or gradients from
one). Both ends keep a ``ChannelState`` and update it from the same facts (the layout of each message, in order),
so they always agree without talking about it:

- The first message announces its layout: a header-only envelope, then a TAIL message with the layout's
  description and the payload. From then on the layout is *agreed* and the envelope carries the payload
  inline, so a hop whose keys, dtypes and shapes repeat is ONE message of a size the receiver knew in advance,
  which is what lets it post that receive before the sender needs it.
- A hop whose layout differs from the agreed one (a bridge carrying another number of rows) sends the envelope
  it is expected to send (its payload space left unused, once) with kind TAIL, then the new layout and payload.
  That channel is then marked *varying* and keeps header-only envelopes (two messages a hop, the second posted
  when the header says its size), so a size that changes every microbatch never wastes a payload's bytes.

Every size is exact on both sides, as NCCL requires (gloo would accept a shorter send into a longer receive,
but nothing here relies on it). Pure: no torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimo.comm.wire import HEADER_BYTES, Kind, Layout, TensorSpec

__all__ = ["ChannelState"]


@dataclass
class ChannelState:
    """One end's view of a channel; the other end's is equal after the same messages."""

    layout: Layout | None = None
    """The layout of the last message, which both ends know."""
    varying: bool = False
    """The layout changed after it was agreed once: envelopes stay header-only."""
    sequence: int = 0
    """Messages so far (a mismatch means the two ends lost step)."""

    @property
    def inline(self) -> bool:
        """Whether the next envelope carries the agreed layout's payload."""
        return self.layout is not None and not self.varying

    def envelope_nbytes(self) -> int:
        """Exact size of the next envelope (the receiver posts it before the sender decides what to send)."""
        return HEADER_BYTES + (self.layout.nbytes if self.inline and self.layout is not None else 0)

    def kind_for(self, specs: tuple[TensorSpec, ...]) -> Kind:
        """How the sender sends a payload with these specs."""
        if self.inline and self.layout is not None and self.layout.specs == specs:
            return Kind.INLINE
        return Kind.TAIL

    def advance(self, kind: Kind, layout: Layout) -> None:
        """Both ends, after each message: ``layout`` is the one the message used."""
        self.sequence += 1
        if kind is Kind.INLINE:
            return
        if self.layout is not None and layout != self.layout:
            self.varying = True
        self.layout = layout
