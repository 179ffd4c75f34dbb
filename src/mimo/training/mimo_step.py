"""The step functions of a MIMO model: ``loss_func``, ``get_batch`` and ``forward_step``.

These keep the names and behaviours of Megatron-Bridge's ``mimo_step`` module:

- ``forward_step(state, data_iterator, model)`` runs one microbatch through the part of the model this rank holds.
  On the terminal stage (the language model's last pipeline stage) it returns ``(per_token_loss,
  partial(loss_func, loss_mask))``; everywhere else it returns ``({module: activation}, None)`` and the schedule
  moves the dict to the next stage or module.
- Only the language model produces a loss; encoders produce activations.

The returned loss is a *sum* over this microbatch's loss tokens together with the token count. The trainer
divides by the number of loss tokens in the whole global batch, so the objective does not depend on how the batch
is cut into microbatches or data-parallel shards.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

import torch

from mimo.training.state import GlobalState

logger = logging.getLogger(__name__)

LossFunc = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]
ForwardStepFunc = Callable[..., tuple[Any, LossFunc | None]]


class StageModel(Protocol):
    """What ``forward_step`` needs to know about the model part a rank holds."""

    @property
    def is_loss_stage(self) -> bool:
        """True on the language model's last pipeline stage, which returns per-token losses."""

    @property
    def needs_data(self) -> bool:
        """True when this rank must read a batch (an encoder's first stage, every language stage)."""

    def __call__(self, **batch: Any) -> torch.Tensor | dict[str, torch.Tensor]: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


def loss_func(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Masked sum of the per-token losses of one microbatch.

    Args:
        loss_mask: 1 where a token contributes to the loss, 0 elsewhere; same number of elements as the output.
        output_tensor: per-token losses ``[B, S]`` from the language model's last stage.

    Returns:
        ``(total_loss, num_tokens, {"lm loss": tensor([total_loss, num_tokens])})``; ``num_tokens`` is an int
        tensor. The reporting entry is detached, so summing it over microbatches and ranks gives the global mean.
    """
    losses = output_tensor.float()
    mask = loss_mask.to(losses)
    if losses.shape != mask.shape:
        # Paired element by element; flattening only here keeps the usual same-shape call to three kernels
        # (it runs per microbatch), and a full sum of a contiguous tensor is the same flat or not.
        if losses.numel() != mask.numel():
            raise ValueError(f"loss_mask has {mask.numel()} elements but the output has {losses.numel()}")
        losses, mask = losses.reshape(-1), mask.reshape(-1)
    total_loss = torch.sum(losses * mask)
    count = mask.sum()  # exact: a float sum of 0/1 values, the same number the int count converts back to
    reporting = torch.stack([total_loss.detach(), count])
    return total_loss, count.to(torch.int), {"lm loss": reporting}


def get_batch(data_iterator: Iterator[Any] | None, device: torch.device | str | None = None) -> dict[str, Any] | None:
    """Next batch from the iterator, with every tensor moved to ``device``; None if exhausted or no iterator.

    It takes an iterator (each call consumes one batch), not a re-iterable such as a list, which would restart.
    """
    if data_iterator is None:
        return None
    if not isinstance(data_iterator, Iterator):
        raise TypeError(f"get_batch needs an iterator, got {type(data_iterator).__name__}; wrap it with iter()")
    try:
        batch = next(data_iterator)
    except StopIteration:
        return None
    return _to_device(batch, device) if device is not None else batch


def _to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def forward_step(
    state: GlobalState, data_iterator: Iterator[Any] | None, model: StageModel
) -> tuple[torch.Tensor | dict[str, torch.Tensor], LossFunc | None]:
    """Run one microbatch through this rank's part of the model.

    Raises:
        RuntimeError: this stage needs data and the iterator gave none.
        ValueError: the terminal stage produced a dict instead of per-token losses (a misconfigured model), or its
            batch lacks ``loss_mask``.
    """
    batch: dict[str, Any] = {}
    if model.needs_data:
        with state.timers("data"):
            loaded = get_batch(data_iterator, device=_device_of(model))
        if loaded is None:
            raise RuntimeError(
                f"get_batch returned None at a stage that needs data (step {state.train_state.step}): "
                "the data iterator is missing or ran out of microbatches"
            )
        batch = loaded
    with state.timers("forward"):
        output = model(**batch)
    if not model.is_loss_stage:
        return output, None
    if isinstance(output, dict):
        raise ValueError(
            "the last pipeline stage must return a per-token loss tensor, "
            f"got a dict with keys {sorted(output)}: is the language model's head on this stage?"
        )
    if "loss_mask" not in batch:
        raise ValueError(f"the loss stage's batch has no 'loss_mask' (it has {sorted(batch)}): its loader must read it")
    return output, partial(loss_func, batch["loss_mask"])


def prepare_forward_step_func(forward_step_func: ForwardStepFunc, state: GlobalState) -> ForwardStepFunc:
    """Bind ``state`` as the first argument of a 3-parameter step function; pass 2-parameter ones through."""
    parameters = [
        p for p in inspect.signature(forward_step_func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) == 3:
        return partial(forward_step_func, state)
    if len(parameters) == 2:
        return forward_step_func
    raise ValueError(
        f"forward step function {getattr(forward_step_func, '__name__', forward_step_func)!r} takes "
        f"{len(parameters)} positional parameters; expected (data_iterator, model) or (state, data_iterator, model)"
    )


def _device_of(model: StageModel) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
