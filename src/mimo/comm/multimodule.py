"""Moves one stage's ``{module: tensor}`` dicts to and from its neighbours, within a module and over bridges.

Forward: a stage receives from the previous stage of its module, or, at a module's first stage, from the last
stage of every source module over a bridge. A bridge routes *samples*: each sender splits its sample-major rows
by the per-sample counts that travel with them (``"<module>/tokens_per_sample"``), each receiver concatenates the
pieces in sample order. Backward mirrors it with the row splits recorded in the forward, so variable counts per
sample work for fan-in and fan-out alike (upstream splits fan-in gradients evenly, a [GAP]).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from mimo.activation_keys import counts_key, is_metadata_key, owner_of
from mimo.comm.p2p import SendQueue, recv_dict, send_dict
from mimo.errors import CommunicationError
from mimo.comm.routing import Route, RoutingPlan, split_rows

__all__ = ["MultiModulePipelineCommunicator"]


@dataclass
class MultiModulePipelineCommunicator:
    """The communicator of the stage ``(module, stage)`` held by ``rank``.

    Args:
        backward_modules: modules that run a backward; gradients are sent only to those, and received
            tensors from the others do not require grad.
        activation_group, gradient_group: world-sized groups for the two directions (see ``parallel.groups``);
            None uses the default group.
    """

    rank: int
    module: str
    stage: int
    routing: RoutingPlan
    backward_modules: Collection[str]
    device: torch.device
    activation_group: dist.ProcessGroup | None = None
    gradient_group: dist.ProcessGroup | None = None
    queue: SendQueue = field(default_factory=SendQueue)
    _in_rows: dict[int, dict[int, int]] = field(default_factory=dict)
    _out_rows: dict[int, dict[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.routes_in: list[Route] = self.routing.routes_in(self.rank, self.module, self.stage)
        self.routes_out: list[Route] = self.routing.routes_out(self.rank, self.module, self.stage)
        self.is_bridge_in = self.stage == 0
        self.is_bridge_out = self.stage == self.routing.layouts[self.module].pp - 1
        successors = sorted({route.dst_module for route in self.routes_out})
        if len(successors) > 1:
            # Gradients from several consumers would have to be summed, not concatenated by samples.
            raise ValueError(f"module {self.module!r} feeds several modules {successors}; only one is supported")

    # forward ---------------------------------------------------------------------------------------------
    def recv_forward(self, *, microbatch: int) -> dict[str, Tensor]:
        """Inputs of this stage, keyed by source module (within a module: the previous stage's dict)."""
        received = [self._recv(r.transfer.src_rank, "receive activations", microbatch, self.activation_group) for r in self.routes_in]
        if not self.is_bridge_in:
            inputs = received[0]
        else:
            inputs = {}
            for source in dict.fromkeys(r.src_module for r in self.routes_in):
                pieces = [p for r, p in zip(self.routes_in, received) if r.src_module == source]
                inputs[source] = torch.cat([p[source] for p in pieces])
                inputs[counts_key(source)] = torch.cat([p[counts_key(source)] for p in pieces])
            self._in_rows[microbatch] = {
                i: p[r.src_module].shape[0] for i, (r, p) in enumerate(zip(self.routes_in, received))
            }
        for key, tensor in inputs.items():
            source = owner_of(key) if self.is_bridge_in else self.module
            if tensor.is_floating_point() and source in self.backward_modules and not is_metadata_key(key):
                tensor.requires_grad_(True)
        return inputs

    def send_forward(self, outputs: dict[str, Tensor], *, microbatch: int) -> None:
        """Send this stage's outputs to the next stage, or split them by samples over every outgoing bridge."""
        if not self.is_bridge_out:
            for route in self.routes_out:
                detached = {k: v.detach() for k, v in outputs.items()}
                self._send(detached, route.transfer.dst_rank, "send activations", microbatch, self.activation_group)
            return
        rows, counts = outputs[self.module].detach(), outputs[counts_key(self.module)]
        counts_list = [int(c) for c in counts.tolist()]
        sizes = split_rows(counts_list, [r.transfer for r in self.routes_out])
        self._out_rows[microbatch] = dict(enumerate(sizes))
        for route, piece in zip(self.routes_out, torch.split(rows, sizes)):
            samples = route.transfer.src_samples
            payload = {self.module: piece, counts_key(self.module): counts[samples.start : samples.stop]}
            self._send(payload, route.transfer.dst_rank, "send activations", microbatch, self.activation_group)

    # backward --------------------------------------------------------------------------------------------
    def recv_backward(self, *, microbatch: int) -> dict[str, Tensor]:
        """Gradients of this stage's outputs, keyed like the outputs."""
        received = [self._recv(r.transfer.dst_rank, "receive gradients", microbatch, self.gradient_group) for r in self.routes_out]
        if not self.is_bridge_out:
            return received[0]
        expected = self._out_rows.pop(microbatch)
        for index, piece in enumerate(received):
            if piece[self.module].shape[0] != expected[index]:
                raise RuntimeError(
                    f"{self.module} stage {self.stage} microbatch {microbatch}: gradient from rank "
                    f"{self.routes_out[index].transfer.dst_rank} has {piece[self.module].shape[0]} rows, "
                    f"the forward sent {expected[index]}"
                )
        return {self.module: torch.cat([piece[self.module] for piece in received])}

    def send_backward(self, input_grads: dict[str, Tensor], *, microbatch: int) -> None:
        """Send input gradients back: to the previous stage, or split by the forward's rows to each source."""
        if not self.is_bridge_in:
            if not input_grads:
                # The previous stage's schedule waits for this gradient: skipping it would hang that rank.
                raise RuntimeError(f"{self.module} stage {self.stage} microbatch {microbatch}: no input gradient")
            for route in self.routes_in:
                self._send(input_grads, route.transfer.src_rank, "send gradients", microbatch, self.gradient_group)
            return
        rows = self._in_rows.pop(microbatch)
        for source in dict.fromkeys(r.src_module for r in self.routes_in):
            if source not in self.backward_modules:
                continue
            indices = [i for i, r in enumerate(self.routes_in) if r.src_module == source]
            pieces = torch.split(input_grads[source], [rows[i] for i in indices])
            for index, piece in zip(indices, pieces):
                peer = self.routes_in[index].transfer.src_rank
                self._send({source: piece}, peer, "send gradients", microbatch, self.gradient_group)

    def send_forward_recv_backward(self, outputs: dict[str, Tensor], *, microbatch: int) -> dict[str, Tensor]:
        self.send_forward(outputs, microbatch=microbatch)
        return self.recv_backward(microbatch=microbatch)

    def send_backward_recv_forward(self, input_grads: dict[str, Tensor], *, microbatch: int,
                                   next_microbatch: int) -> dict[str, Tensor]:
        self.send_backward(input_grads, microbatch=microbatch)
        return self.recv_forward(microbatch=next_microbatch)

    def wait_all(self) -> None:
        """Complete every posted send (their buffers are held until then)."""
        try:
            self.queue.wait_all()
        except RuntimeError as error:
            raise CommunicationError(
                f"module {self.module!r} stage {self.stage}: completing sends to ranks {self.queue.peers()} failed "
                f"({error})"
            ) from error

    def _send(self, payload: dict[str, Tensor], peer: int, operation: str, microbatch: int,
              group: dist.ProcessGroup | None) -> None:
        # Posting a send fails at once when gloo already knows the peer's connection is closed.
        try:
            send_dict(self.queue, payload, peer, group)
        except RuntimeError as error:
            raise CommunicationError(
                f"module {self.module!r} stage {self.stage}: {operation} of microbatch {microbatch} to rank "
                f"{peer} failed: the peer died or did not answer within the collective timeout ({error})"
            ) from error

    def _recv(self, peer: int, operation: str, microbatch: int,
              group: dist.ProcessGroup | None) -> dict[str, Tensor]:
        try:
            return recv_dict(peer, device=self.device, group=group)
        except RuntimeError as error:
            raise CommunicationError(
                f"module {self.module!r} stage {self.stage}: {operation} of microbatch {microbatch} from rank "
                f"{peer} failed: the peer died or did not answer within the collective timeout ({error})"
            ) from error
