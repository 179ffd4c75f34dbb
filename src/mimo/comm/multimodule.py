"""Moves one stage's ``{module: tensor}`` dicts to and from its neighbours, within a module and over bridges.

Forward: a stage receives from the previous stage of its module, or, at a module's first stage, from the last
stage of every source module over a bridge. A bridge routes *samples*: each sender splits its sample-major rows
by the per-sample counts that travel with them (``"<module>/tokens_per_sample"``), each receiver concatenates the
pieces in sample order. Backward mirrors it with the row splits recorded in the forward, so variable counts per
sample work for fan-in and fan-out alike (upstream splits fan-in gradients evenly, a [GAP]).

Each peer and direction is one channel of ``comm.p2p`` (one packed message per hop once shapes repeat). When
the runner says which microbatches will arrive in this step (``begin_step``), the receive of the next message
of every incoming channel is posted ahead: at the start, then right after each message is consumed. That is
done on gloo only: its transfers run on its own threads, whereas NCCL runs one group's operations in order on
one stream, where a receive posted early would hold back the sends queued behind it on the same group; there
each receive is posted when its action runs.

A route that starts and ends on this rank (an encoder colocated with a pipelined language model) goes through
the rank's ``LocalHandoffs`` instead of a channel, with the same splits, checks and copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from mimo.activation_keys import counts_key, is_metadata_key, owner_of
from mimo.comm.local_handoffs import LocalHandoffs
from mimo.comm.p2p import Inbox, Outbox, TransferFailed, WireError
from mimo.comm.routing import Route, RoutingPlan, split_rows
from mimo.errors import CommunicationError

__all__ = ["MultiModulePipelineCommunicator"]

_ACTIVATIONS, _GRADIENTS = "activations", "gradients"


@dataclass
class MultiModulePipelineCommunicator:
    """The communicator of the stage ``(module, stage)`` held by ``rank``.

    Args:
        backward_modules: modules that run a backward; gradients are sent only to those, and received
            tensors from the others do not require grad.
        activation_group, gradient_group: world-sized groups for the two directions (see ``parallel.groups``);
            None uses the default group.
        bridge_activation_group, bridge_gradient_group: the groups of bridge routes, where they differ (a
            language model pipelined over its encoders' ranks); None: the two above.
        max_sends_in_flight: hops per outgoing channel whose buffers may still be in flight (see ``Outbox``).
        post_receives_early: post receives ahead of need; None decides by backend (gloo yes, others no).
        local: the mailbox shared with the other modules' communicators of this rank, for routes that stay on
            it; None where no route does.
    """

    rank: int
    module: str
    stage: int
    routing: RoutingPlan
    backward_modules: Collection[str]
    device: torch.device
    activation_group: dist.ProcessGroup | None = None
    gradient_group: dist.ProcessGroup | None = None
    bridge_activation_group: dist.ProcessGroup | None = None
    bridge_gradient_group: dist.ProcessGroup | None = None
    max_sends_in_flight: int = 2
    post_receives_early: bool | None = None
    local: LocalHandoffs | None = None
    _in_rows: dict[int, dict[int, int]] = field(default_factory=dict)
    _out_rows: dict[int, dict[int, int]] = field(default_factory=dict)
    _outboxes: dict[tuple[str, int, bool], Outbox] = field(default_factory=dict)
    _inboxes: dict[tuple[str, int, bool], Inbox] = field(default_factory=dict)
    """Channels by ``(direction, peer, over a bridge)``."""
    _expected: dict[str, deque[int]] = field(default_factory=dict)
    """Per direction, the microbatches still to be received in this step (set by ``begin_step``)."""

    def __post_init__(self) -> None:
        self.routes_in: list[Route] = self.routing.routes_in(self.rank, self.module, self.stage)
        self.routes_out: list[Route] = self.routing.routes_out(self.rank, self.module, self.stage)
        self.is_bridge_in = self.stage == 0
        self.is_bridge_out = self.stage == self.routing.layouts[self.module].pp - 1
        successors = sorted({route.dst_module for route in self.routes_out})
        if len(successors) > 1:
            # Gradients from several consumers would have to be summed, not concatenated by samples.
            raise ValueError(f"module {self.module!r} feeds several modules {successors}; only one is supported")
        self._in_peers = [route.transfer.src_rank for route in self.routes_in]
        self._out_peers = [route.transfer.dst_rank for route in self.routes_out]
        self._in_modules = [route.src_module for route in self.routes_in]
        self._out_modules = [route.dst_module for route in self.routes_out]
        """The module at the other end of each peer's route (which mailbox a route on this rank uses)."""
        leader, followers = self.routing.tensor_parallel_group(self.rank, self.module)
        self._tp_leader = None if leader == self.rank else leader
        """The rank this follower receives everything from; None on a leader (or without tensor parallelism)."""
        self._tp_followers = followers if self._tp_leader is None else []
        """The ranks this leader relays what it receives to."""
        if self._tp_leader is not None:
            # A follower's activations and gradients both come from its leader, and it sends nothing.
            self._in_peers = self._out_peers = [self._tp_leader]
            self._in_modules = self._out_modules = [self.module]

    # step ------------------------------------------------------------------------------------------------
    def begin_step(self, *, forward: Sequence[int], backward: Sequence[int]) -> None:
        """Announce the microbatches this step will receive, in order: activations (``forward``) and gradients
        (``backward``). On gloo, the first receive of every incoming channel is posted now."""
        self._expected = {_ACTIVATIONS: deque(forward), _GRADIENTS: deque(backward)}
        if self._posts_early():
            self._post_next(_ACTIVATIONS)
            self._post_next(_GRADIENTS)

    def wait_all(self) -> None:
        """Complete every posted send (each buffer is released as soon as its own send completed)."""
        pending = sorted({box.peer for box in self._outboxes.values() if box.in_flight})
        try:
            for box in self._outboxes.values():
                box.wait_all()
        except TransferFailed as error:
            raise CommunicationError(
                f"module {self.module!r} stage {self.stage}: completing sends to ranks {pending} failed ({error})"
            ) from error
        self._expected = {}

    def held_bytes(self) -> int:
        """Bytes of buffers the communicator holds now: sends in flight and receives posted ahead."""
        return sum(box.held_bytes for box in self._outboxes.values()) + sum(
            box.posted_bytes for box in self._inboxes.values()
        )

    # forward ---------------------------------------------------------------------------------------------
    def recv_forward(self, *, microbatch: int) -> dict[str, Tensor]:
        """Inputs of this stage, keyed by source module (within a module: the previous stage's dict)."""
        received = self._receive(_ACTIVATIONS, microbatch)
        if self._tp_leader is not None:
            inputs = received[0]  # already assembled by the leader
        elif not self.is_bridge_in:
            inputs = received[0]
        else:
            inputs = {}
            for source in dict.fromkeys(r.src_module for r in self.routes_in):
                pieces = [p for r, p in zip(self.routes_in, received) if r.src_module == source]
                inputs[source] = _cat([p[source] for p in pieces])
                inputs[counts_key(source)] = _cat([p[counts_key(source)] for p in pieces])
            self._in_rows[microbatch] = {
                i: p[r.src_module].shape[0] for i, (r, p) in enumerate(zip(self.routes_in, received))
            }
        for follower in self._tp_followers:
            self._send(_ACTIVATIONS, follower, inputs, microbatch)
        for key, tensor in inputs.items():
            source = owner_of(key) if self.is_bridge_in else self.module
            if tensor.is_floating_point() and source in self.backward_modules and not is_metadata_key(key):
                tensor.requires_grad_(True)
        return inputs

    def send_forward(self, outputs: dict[str, Tensor], *, microbatch: int) -> None:
        """Send this stage's outputs to the next stage, or split them by samples over every outgoing bridge."""
        if self._tp_leader is not None:
            return  # the leader's outputs are the same: it sends for the group
        if not self.is_bridge_out:
            for peer in self._out_peers:  # packing copies the tensors' data, never their graph
                self._send(_ACTIVATIONS, peer, outputs, microbatch)
            return
        rows, counts = outputs[self.module].detach(), outputs[counts_key(self.module)]
        counts_list = [int(c) for c in counts.tolist()]
        sizes = split_rows(counts_list, [r.transfer for r in self.routes_out])
        self._out_rows[microbatch] = dict(enumerate(sizes))
        for route, piece in zip(self.routes_out, torch.split(rows, sizes)):
            samples = route.transfer.src_samples
            payload = {self.module: piece, counts_key(self.module): counts[samples.start : samples.stop]}
            self._send(_ACTIVATIONS, route.transfer.dst_rank, payload, microbatch, receiver=route.dst_module)

    # backward --------------------------------------------------------------------------------------------
    def recv_backward(self, *, microbatch: int) -> dict[str, Tensor]:
        """Gradients of this stage's outputs, keyed like the outputs."""
        received = self._receive(_GRADIENTS, microbatch)
        if self._tp_leader is not None or not self.is_bridge_out:
            return self._relay_gradients(received[0], microbatch)
        expected = self._out_rows.pop(microbatch)
        for index, piece in enumerate(received):
            if piece[self.module].shape[0] != expected[index]:
                raise RuntimeError(
                    f"{self.module} stage {self.stage} microbatch {microbatch}: gradient from rank "
                    f"{self.routes_out[index].transfer.dst_rank} has {piece[self.module].shape[0]} rows, "
                    f"the forward sent {expected[index]}"
                )
        return self._relay_gradients({self.module: _cat([piece[self.module] for piece in received])}, microbatch)

    def _relay_gradients(self, grads: dict[str, Tensor], microbatch: int) -> dict[str, Tensor]:
        """Pass the gradients this leader received on to its tensor-parallel followers; return them."""
        for follower in self._tp_followers:
            self._send(_GRADIENTS, follower, grads, microbatch)
        return grads

    def send_backward(self, input_grads: dict[str, Tensor], *, microbatch: int) -> None:
        """Send input gradients back: to the previous stage, or split by the forward's rows to each source."""
        if self._tp_leader is not None:
            return  # the leader's input gradients are the same: it sends for the group
        if not self.is_bridge_in:
            if not input_grads:
                # The previous stage's schedule waits for this gradient: skipping it would hang that rank.
                raise RuntimeError(f"{self.module} stage {self.stage} microbatch {microbatch}: no input gradient")
            for peer in self._in_peers:
                self._send(_GRADIENTS, peer, input_grads, microbatch)
            return
        rows = self._in_rows.pop(microbatch)
        for source in dict.fromkeys(r.src_module for r in self.routes_in):
            if source not in self.backward_modules:
                continue
            indices = [i for i, r in enumerate(self.routes_in) if r.src_module == source]
            pieces = torch.split(input_grads[source], [rows[i] for i in indices])
            for index, piece in zip(indices, pieces):
                self._send(_GRADIENTS, self.routes_in[index].transfer.src_rank, {source: piece}, microbatch,
                           receiver=source)

    def send_forward_recv_backward(self, outputs: dict[str, Tensor], *, microbatch: int) -> dict[str, Tensor]:
        self.send_forward(outputs, microbatch=microbatch)
        return self.recv_backward(microbatch=microbatch)

    def send_backward_recv_forward(self, input_grads: dict[str, Tensor], *, microbatch: int,
                                   next_microbatch: int) -> dict[str, Tensor]:
        self.send_backward(input_grads, microbatch=microbatch)
        return self.recv_forward(microbatch=next_microbatch)

    # channels --------------------------------------------------------------------------------------------
    def _group(self, direction: str, bridge: bool) -> dist.ProcessGroup | None:
        if bridge and (group := self.bridge_activation_group if direction == _ACTIVATIONS
                       else self.bridge_gradient_group) is not None:
            return group
        return self.activation_group if direction == _ACTIVATIONS else self.gradient_group

    def _inbox(self, direction: str, peer: int, bridge: bool) -> Inbox:
        group = self._group(direction, bridge)
        box = self._inboxes.get((direction, peer, bridge))
        if box is None or box.group is not group:  # groups are attached after construction (``use_groups``)
            box = self._inboxes[(direction, peer, bridge)] = Inbox(peer, group, self.device)
        return box

    def _outbox(self, direction: str, peer: int, bridge: bool) -> Outbox:
        group = self._group(direction, bridge)
        box = self._outboxes.get((direction, peer, bridge))
        if box is None or box.group is not group:
            box = self._outboxes[(direction, peer, bridge)] = Outbox(peer, group, max_in_flight=self.max_sends_in_flight)
        return box

    def _posts_early(self) -> bool:
        if self.post_receives_early is None:
            groups = [self.activation_group, self.gradient_group, self.bridge_activation_group,
                      self.bridge_gradient_group]
            self.post_receives_early = all(dist.get_backend(group) == "gloo" for group in groups)
        return self.post_receives_early

    def _peers(self, direction: str) -> list[int]:
        """Peers this stage receives ``direction`` from."""
        return self._in_peers if direction == _ACTIVATIONS else self._out_peers

    def _peer_modules(self, direction: str) -> list[str]:
        """The module sending each of ``_peers(direction)``'s messages."""
        return self._in_modules if direction == _ACTIVATIONS else self._out_modules

    def _post_next(self, direction: str) -> None:
        """Post the receive of the next expected message on every incoming channel of ``direction``."""
        expected = self._expected.get(direction)
        if not expected:
            return
        for peer, sender in zip(self._peers(direction), self._peer_modules(direction)):
            if peer == self.rank:
                continue  # handed over on the rank: nothing to post
            box = self._inbox(direction, peer, bridge=sender != self.module)
            try:
                box.post(expected[0])
            except TransferFailed as error:
                raise self._error("receive", direction, error.microbatch, peer, error) from error

    def _receive(self, direction: str, microbatch: int) -> list[dict[str, Tensor]]:
        expected = self._expected.get(direction)
        if expected:
            if expected[0] != microbatch:
                raise RuntimeError(
                    f"module {self.module!r} stage {self.stage}: receive {direction} of microbatch {microbatch} "
                    f"comes before microbatch {expected[0]}, which begin_step announced first"
                )
            expected.popleft()
        received = []
        for peer, sender in zip(self._peers(direction), self._peer_modules(direction)):
            if peer == self.rank:
                received.append(self._handoffs().take(direction, sender, self.module, microbatch))
                continue
            try:
                received.append(self._inbox(direction, peer, bridge=sender != self.module).receive(microbatch))
            except (TransferFailed, WireError) as error:
                raise self._error("receive", direction, microbatch, peer, error) from error
        if self.post_receives_early:
            self._post_next(direction)
        return received

    def _send(self, direction: str, peer: int, payload: dict[str, Tensor], microbatch: int, *,
              receiver: str | None = None) -> None:
        """Send ``payload`` to ``peer``; a bridge route names the ``receiver`` module (its own group, or this rank)."""
        if peer == self.rank:
            if receiver is None:
                raise RuntimeError(f"module {self.module!r} stage {self.stage}: a hop within the module targets its "
                                   f"own rank {self.rank}; only bridge routes may stay on a rank")
            self._handoffs().put(direction, self.module, receiver, microbatch, payload)
            return
        try:
            self._outbox(direction, peer, bridge=receiver is not None).send(payload, microbatch)
        except TransferFailed as error:
            raise self._error("send", direction, error.microbatch, peer, error) from error

    def _handoffs(self) -> LocalHandoffs:
        if self.local is None:
            raise RuntimeError(f"module {self.module!r} stage {self.stage}: a route stays on rank {self.rank}, "
                               "but its communicator has no local mailbox")
        return self.local

    def _error(self, verb: str, direction: str, microbatch: int, peer: int,
               error: BaseException) -> CommunicationError:
        where = "from" if verb == "receive" else "to"
        if isinstance(error, WireError):
            cause = f"the two ranks disagree on the message: {error}"
        else:
            cause = f"the peer died or did not answer within the collective timeout ({error})"
        return CommunicationError(
            f"module {self.module!r} stage {self.stage}: {verb} {direction} of microbatch {microbatch} {where} rank "
            f"{peer} failed: {cause}"
        )


def _cat(tensors: list[Tensor]) -> Tensor:
    """``torch.cat``, without a copy for the common single piece (a received view, already contiguous)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
