"""Point-to-point transfer of ``{name: tensor}`` dicts over one channel: one message per hop when shapes repeat.

A channel is one direction to or from one peer on one process group: an ``Outbox`` on the sending rank, an
``Inbox`` on the receiving one. Each hop is packed into one buffer (``wire``) and the two ends agree on the next
message's exact size from the messages so far (``channel``), so:

- a hop whose layout is agreed is ONE message; the first hop of a channel, or one whose layout changed, is two
  (the layout's description travels with the payload, so dtype and shape are always agreed: gloo checks
  neither, and would reinterpret or truncate bytes);
- the receiver can post its receive as soon as it knows one will come (``Inbox.post``), long before it needs
  it. gloo only moves a message once its receive is posted, so a receive posted late is a round trip at the
  moment the receiver waits; posted early, the sender's data flows while both compute;
- a sent buffer is dropped as soon as its send completes: ``Outbox`` keeps at most ``max_in_flight`` hops in
  flight per channel, waiting for the oldest before posting another, so buffers held by sends stay bounded by a
  constant instead of growing with the number of microbatches. (gloo's send handles cannot be polled: their
  ``is_completed`` stays False until ``wait``, and a short ``wait`` timeout poisons the whole process group.)

Waiting for the oldest send is safe in a schedule that runs without it: that send completes once the peer
posted its receive, which the peer does right after consuming the message before it.

Errors are ``TransferFailed`` (the peer died, the timeout passed) or ``WireError`` (the two ends disagree), each
naming the microbatch, so the caller can say which module, stage and operation failed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mimo.comm.channel import ChannelState
from mimo.comm.wire import (
    HEADER_BYTES,
    Header,
    Kind,
    Layout,
    WireError,
    aligned,
    decode_description,
    description_nbytes,
    layout_of,
    pack,
    read_header,
    unpack,
    write_header,
)

__all__ = ["Inbox", "Outbox", "TransferFailed", "WireError"]


class TransferFailed(RuntimeError):
    """A send or receive of ``microbatch`` failed in the backend (peer gone, timeout)."""

    def __init__(self, microbatch: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.microbatch = microbatch


@dataclass
class _InFlight:
    works: list[dist.Work]
    buffers: list[Tensor]
    microbatch: int
    nbytes: int


class Outbox:
    """Sends to ``peer`` on ``group``."""

    def __init__(self, peer: int, group: dist.ProcessGroup | None, *, max_in_flight: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.peer, self.group, self.max_in_flight = peer, group, max_in_flight
        self.state = ChannelState()
        self._in_flight: deque[_InFlight] = deque()
        self.held_bytes = 0
        """Bytes of send buffers not released yet."""

    def send(self, tensors: Mapping[str, Tensor], microbatch: int) -> None:
        """Post one hop; first wait for the oldest hop in flight if ``max_in_flight`` are."""
        while len(self._in_flight) >= self.max_in_flight:
            self._complete_oldest()
        specs = layout_of(tensors)
        kind = self.state.kind_for(specs)
        layout = self.state.layout if kind is Kind.INLINE else Layout(specs)
        assert layout is not None
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        envelope_nbytes = self.state.envelope_nbytes()
        # A TAIL envelope's payload space (a layout change on an inline channel) is unused: zero, not stale bytes.
        envelope = (torch.empty if kind is Kind.INLINE else torch.zeros)(envelope_nbytes, dtype=torch.uint8,
                                                                         device=device)
        tail_sizes = (len(layout.description), layout.nbytes) if kind is Kind.TAIL else (0, 0)
        write_header(envelope, Header(kind, microbatch, self.state.sequence, layout.fingerprint, *tail_sizes))
        buffers = [envelope]
        if kind is Kind.INLINE:
            pack(tensors, layout, envelope, HEADER_BYTES)
        else:
            start = description_nbytes(layout)
            tail = torch.empty(start + layout.nbytes, dtype=torch.uint8, device=device)
            description = torch.frombuffer(bytearray(layout.description), dtype=torch.uint8)
            tail[: len(layout.description)].copy_(description)
            pack(tensors, layout, tail, start)
            buffers.append(tail)
        # The state advances before the posts: a failed post ends the run, and the next message must not reuse
        # this sequence number.
        self.state.advance(kind, layout)
        works = []
        try:
            for buffer in buffers:
                works.append(dist.isend(buffer, dst=self.peer, group=self.group))
        except RuntimeError as error:  # gloo refuses at once when it already knows the peer is gone
            raise TransferFailed(microbatch, error) from error
        nbytes = sum(buffer.numel() for buffer in buffers)
        self._in_flight.append(_InFlight(works, buffers, microbatch, nbytes))
        self.held_bytes += nbytes

    def wait_all(self) -> None:
        """Complete every hop in flight and drop its buffers."""
        while self._in_flight:
            self._complete_oldest()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _complete_oldest(self) -> None:
        sent = self._in_flight[0]
        try:
            for work in sent.works:
                work.wait()
        except RuntimeError as error:
            raise TransferFailed(sent.microbatch, error) from error
        self._in_flight.popleft()
        self.held_bytes -= sent.nbytes


class Inbox:
    """Receives from ``peer`` on ``group`` onto ``device``; at most one envelope receive is posted at a time
    (the next one's size is known only once the previous message has been read)."""

    def __init__(self, peer: int, group: dist.ProcessGroup | None, device: torch.device) -> None:
        self.peer, self.group, self.device = peer, group, device
        self.state = ChannelState()
        self._posted: tuple[dist.Work, Tensor] | None = None

    @property
    def posted_bytes(self) -> int:
        return 0 if self._posted is None else self._posted[1].numel()

    @property
    def is_posted(self) -> bool:
        return self._posted is not None

    def post(self, microbatch: int) -> None:
        """Post the receive of the next message (``microbatch`` is only for the error message)."""
        if self._posted is not None:
            return
        envelope = torch.empty(self.state.envelope_nbytes(), dtype=torch.uint8, device=self.device)
        try:
            self._posted = (dist.irecv(envelope, src=self.peer, group=self.group), envelope)
        except RuntimeError as error:
            raise TransferFailed(microbatch, error) from error

    def receive(self, microbatch: int) -> dict[str, Tensor]:
        """The next hop, which must be ``microbatch``'s; views of the received buffer."""
        self.post(microbatch)
        assert self._posted is not None
        work, envelope = self._posted
        self._posted = None
        self._wait(work, microbatch)
        header = read_header(envelope)
        self._check(header, microbatch)
        if header.kind is Kind.INLINE:
            layout = self.state.layout
            assert layout is not None
            tensors = unpack(envelope, layout, HEADER_BYTES)
        else:
            layout, tensors = self._receive_tail(header, microbatch)
        self.state.advance(header.kind, layout)
        return tensors

    def _receive_tail(self, header: Header, microbatch: int) -> tuple[Layout, dict[str, Tensor]]:
        start = aligned(header.description_bytes)
        tail = torch.empty(start + header.payload_bytes, dtype=torch.uint8, device=self.device)
        try:
            work = dist.irecv(tail, src=self.peer, group=self.group)
        except RuntimeError as error:
            raise TransferFailed(microbatch, error) from error
        self._wait(work, microbatch)
        description = bytes(tail[: header.description_bytes].cpu().tolist())
        layout = decode_description(description, header.fingerprint)
        if layout.nbytes != header.payload_bytes or description_nbytes(layout) != start:
            raise WireError(f"layout {layout} takes {layout.nbytes} bytes, the header says {header.payload_bytes}")
        return layout, unpack(tail, layout, start)

    def _wait(self, work: dist.Work, microbatch: int) -> None:
        try:
            work.wait()
        except RuntimeError as error:
            raise TransferFailed(microbatch, error) from error

    def _check(self, header: Header, microbatch: int) -> None:
        problems = []
        if header.sequence != self.state.sequence:
            problems.append(f"message {header.sequence} of the channel where {self.state.sequence} was expected")
        if header.microbatch != microbatch:
            problems.append(f"microbatch {header.microbatch} where {microbatch} was expected")
        if header.kind is Kind.INLINE:
            layout = self.state.layout
            if not self.state.inline or layout is None or header.fingerprint != layout.fingerprint:
                problems.append(f"an inline payload that does not match the agreed layout ({layout})")
        if problems:
            raise WireError("received " + " and ".join(problems))
