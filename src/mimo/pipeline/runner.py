"""Executes one rank's action list for one training step: the only place a schedule has side effects.

Each action kind has a small handler; the stage's inputs, outputs and gradients live in per-microbatch
records between the actions that produce and consume them. On any failure the whole plan of this rank is
logged with the failing action marked, then the error propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mimo.comm.multimodule import MultiModulePipelineCommunicator
from mimo.pipeline.actions import Action, ActionKind
from mimo.pipeline.backward import backward_step_multimodule
from mimo.pipeline.held import HeldPeak, tensor_bytes
from mimo.pipeline.lifetimes import last_uses, receive_order

__all__ = ["BoundStage", "StageLosses", "StageRunner", "run_stages"]

logger = logging.getLogger(__name__)


class BoundStage:
    """A stage model with the tensors it received for one microbatch, called by ``forward_step`` like a model.

    Received activations are passed as an explicit ``inputs=`` argument rather than stored on the model
    (upstream's ``set_input_tensor`` side channel).
    """

    def __init__(self, stage: torch.nn.Module, inputs: dict[str, Tensor]) -> None:
        self.stage, self.inputs = stage, inputs
        self.is_loss_stage: bool = stage.is_loss_stage
        self.needs_data: bool = stage.needs_data

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.stage.parameters()

    def __call__(self, **batch: Any) -> Tensor | dict[str, Tensor]:
        return self.stage(inputs=self.inputs, **batch)


@dataclass
class StageLosses:
    """This rank's share of a step's loss: per microbatch, the ``[loss_sum, num_tokens]`` of the loss stage.

    Kept on the device where it was computed: summing and the finiteness check are device ops, so a microbatch
    costs no host sync; the step's one reduction brings everything to the host together.
    """

    reports: dict[int, Tensor] = field(default_factory=dict)

    def add(self, microbatch: int, report: Tensor) -> None:
        self.reports[microbatch] = report.detach().float()

    def total(self, device: torch.device) -> Tensor:
        """The summed ``[loss_sum, num_tokens]`` on ``device`` (zeros off the loss stage), in microbatch order.

        Made where the reports are (no host-to-device copy, which would wait for the device's queued work)."""
        total = torch.zeros(2, dtype=torch.float32, device=device)
        for microbatch in sorted(self.reports):
            total = total + self.reports[microbatch].to(device)
        return total

    def nonfinite(self, num_microbatches: int, device: torch.device) -> Tensor:
        """float64 ``[num_microbatches]`` on ``device``: 1 where this rank's loss of that microbatch is not finite.

        One finiteness check over the stacked reports (a few kernels a step rather than a few per microbatch)."""
        if not self.reports:  # off the loss stage
            return torch.zeros(num_microbatches, dtype=torch.float64, device=device)
        order = sorted(self.reports)
        reports = torch.stack([self.reports[m].to(device) for m in order])
        flags = (~torch.isfinite(reports).all(dim=1)).to(torch.float64)
        if order == list(range(num_microbatches)):  # the loss stage reports every microbatch
            return flags
        zero, by_microbatch = flags.new_zeros(()), dict(zip(order, flags))
        return torch.stack([by_microbatch.get(m, zero) for m in range(num_microbatches)])


@dataclass
class _Record:
    inputs: dict[str, Tensor] = field(default_factory=dict)
    output: Tensor | dict[str, Tensor] | None = None
    output_grads: dict[str, Tensor] | None = None
    input_grads: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StageRunner:
    """Runs a schedule for the single stage this rank holds (non-colocated layouts).

    ``forward_step`` is the prepared step function ``(data_iterator, model) -> (output, loss_func | None)``.
    """

    stage: torch.nn.Module
    communicator: MultiModulePipelineCommunicator
    forward_step: Callable[[Iterable[Any] | None, Any], tuple[Any, Any]]
    timers: Callable[[str], Any]
    grad_enabled: bool = True
    """False for a stage that runs no backward (frozen, nothing trainable upstream): no graph is kept."""
    tracer: Callable[[Action], AbstractContextManager[Any]] | None = None
    """Times each action for the trace (``train.trace``); None: nothing recorded."""
    measure_held: bool = False
    """Add up the bytes held after every action into ``held`` (a test and benchmark aid; costs a little)."""
    held: HeldPeak = field(default_factory=HeldPeak)
    """Peak of the last step: microbatches with a record always, bytes with ``measure_held``."""

    def run(self, actions: list[Action], data_iterator: Iterable[Any] | None) -> StageLosses:
        """Execute ``actions``; return this rank's losses (non-zero on the loss stage only)."""
        module = self.communicator.module
        return run_stages({module: self}, actions, {module: data_iterator})[module]

    def begin(self, actions: list[Action], data_iterator: Iterable[Any] | None) -> None:
        """Start a step of this stage's ``actions``: before the first one the communicator learns which messages
        this step receives, so it can post their receives ahead of need."""
        self._records: dict[int, _Record] = {}
        self._data = data_iterator
        self._losses = StageLosses()
        self.held = HeldPeak()
        self._position = -1
        self._last_use = last_uses(actions)
        forward, backward = receive_order(actions)
        self._handlers: dict[ActionKind, Callable[[Action], None]] = {
            ActionKind.RECV_F: self._recv_forward,
            ActionKind.F: self._forward,
            ActionKind.SEND_F: self._send_forward,
            ActionKind.RECV_B: self._recv_backward,
            ActionKind.B: self._backward,
            ActionKind.SEND_B: self._send_backward,
        }
        self.communicator.begin_step(forward=forward, backward=backward)

    def execute(self, action: Action) -> None:
        """Run this stage's next action; each microbatch's record is dropped after its last action."""
        self._position += 1
        with self.tracer(action) if self.tracer is not None else nullcontext():
            self._handlers[action.kind](action)
        if self._last_use[action.microbatch] == self._position:
            self._records.pop(action.microbatch, None)
        self._note_held()

    def finish(self) -> StageLosses:
        """Complete this step's sends; this rank's losses."""
        with self.timers("comm-wait"):
            self.communicator.wait_all()
        return self._losses

    def _note_held(self) -> None:
        records = self._records.values()
        record_bytes = comm_bytes = 0
        if self.measure_held:
            record_bytes = tensor_bytes(
                value for r in records for value in (r.inputs, r.output, r.output_grads, r.input_grads)
            )
            comm_bytes = self.communicator.held_bytes()
        self.held.update(microbatches=len(self._records), record_bytes=record_bytes, comm_bytes=comm_bytes)

    def _record(self, action: Action) -> _Record:
        return self._records.setdefault(action.microbatch, _Record())

    def _recv_forward(self, action: Action) -> None:
        with self.timers("comm-wait"):
            self._record(action).inputs = self.communicator.recv_forward(microbatch=action.microbatch)

    def _forward(self, action: Action) -> None:
        record = self._record(action)
        with torch.set_grad_enabled(self.grad_enabled):
            output, loss_fn = self.forward_step(self._data, BoundStage(self.stage, record.inputs))
        if loss_fn is not None:
            total_loss, _, report = loss_fn(output)
            self._losses.add(action.microbatch, report["lm loss"])
            output = total_loss
        record.output = output

    def _send_forward(self, action: Action) -> None:
        record = self._record(action)
        assert isinstance(record.output, dict), f"{action}: only dict outputs are sent"
        self.communicator.send_forward(record.output, microbatch=action.microbatch)

    def _recv_backward(self, action: Action) -> None:
        with self.timers("comm-wait"):
            self._record(action).output_grads = self.communicator.recv_backward(microbatch=action.microbatch)

    def _backward(self, action: Action) -> None:
        record = self._record(action)
        with self.timers("backward"):
            record.input_grads = backward_step_multimodule(record.inputs, record.output, record.output_grads)
        # Nothing of this microbatch is needed after its gradients are out except what SEND_B sends.
        record.inputs, record.output, record.output_grads = {}, None, None

    def _send_backward(self, action: Action) -> None:
        self.communicator.send_backward(self._record(action).input_grads, microbatch=action.microbatch)


def run_stages(runners: Mapping[str, StageRunner], actions: list[Action],
               data: Mapping[str, Iterable[Any] | None]) -> dict[str, StageLosses]:
    """Execute one rank's ``actions`` over the stages it holds (one runner per module; several where encoders
    share the rank of a language stage), each action by its module's runner; every module's losses.

    On a failure the rank's whole plan is logged with the failing action marked, then the error propagates.
    """
    rank = next(iter(runners.values())).communicator.rank
    index = -1
    try:
        for module, runner in runners.items():
            runner.begin([action for action in actions if action.module == module], data[module])
        for index, action in enumerate(actions):
            runners[action.module].execute(action)
    except Exception:
        logger.error("rank %d failed at %s:\n%s", rank, actions[index] if index >= 0 else "the start of the step",
                     _format(actions, index))
        raise
    return {module: runner.finish() for module, runner in runners.items()}


def _format(actions: list[Action], failed: int) -> str:
    return "\n".join(f"  {action}{'  <-- failed here' if i == failed else ''}" for i, action in enumerate(actions))
