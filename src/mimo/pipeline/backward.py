"""Backward of one stage for one microbatch, over ``{module: tensor}`` dicts."""

from __future__ import annotations

import torch
from torch import Tensor

from mimo.activation_keys import is_metadata_key

__all__ = ["backward_step_multimodule"]


def backward_step_multimodule(
    input_tensors: dict[str, Tensor],
    output_tensors: Tensor | dict[str, Tensor],
    output_grads: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    """Backpropagate one stage and return the gradient of every input that needs one, keyed like the inputs.

    Args:
        input_tensors: what the stage received, keyed by source module (metadata keys with ``/`` are skipped).
        output_tensors: the loss (a scalar, on the loss stage) or the stage's output dict.
        output_grads: gradients of the outputs, keyed like them; None on the loss stage.

    Entries that do not require grad (a frozen source, an empty text-only payload) are skipped, so a stage
    whose outputs need no gradient runs no backward at all.
    """
    if isinstance(output_tensors, Tensor):
        if output_grads:
            raise ValueError(f"a loss output takes no output gradients, got keys {sorted(output_grads)}")
        tensors, grads = [output_tensors], [None]
    else:
        output_grads = output_grads or {}
        missing = [k for k, v in output_tensors.items() if v.requires_grad and k not in output_grads]
        if missing:
            raise ValueError(f"no gradient received for outputs {missing}; received {sorted(output_grads)}")
        keys = [k for k, v in output_tensors.items() if v.requires_grad and not is_metadata_key(k)]
        tensors, grads = [output_tensors[k] for k in keys], [output_grads[k] for k in keys]
    if tensors and any(t.requires_grad for t in tensors):
        torch.autograd.backward(tensors, grad_tensors=grads)
    return {
        key: tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        for key, tensor in input_tensors.items()
        if not is_metadata_key(key) and tensor.requires_grad
    }
