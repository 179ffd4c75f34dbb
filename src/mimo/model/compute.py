"""How a module computes: its precision (fp32, or bf16 autocast over fp32 weights) and which of its transformer
layers are recomputed in the backward (activation checkpointing).

Precision. Under ``bf16`` a module's forward runs inside ``torch.autocast(dtype=bfloat16)``: matmuls run in
bf16 while parameters (and so their gradients, the gradient reduction and the optimizer) stay in their own dtype,
and the per-token loss is computed outside autocast in fp32. Activations leave a pipeline stage in the compute
dtype (half the bytes on the wire) and the receiving stage casts them back to its parameters' dtype, so its
residual stream is what the same layers compute in one process, rounded once per hop. Under ``fp32`` nothing here
does anything: no autocast context, no cast, so fp32 runs stay bit for bit what they were.

Checkpointing. A slice (a model family's stage part) that supports it has an integer attribute
``checkpoint_every`` (0 by default) and runs each layer through ``run_layer``: layer ``i`` (global index) is
wrapped in ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` when ``checkpoint_every`` divides ``i``.
The global index keeps the choice independent of the pipeline split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mimo.activation_keys import is_metadata_key
from mimo.model.configs import LANGUAGE_MODULE

__all__ = [
    "COMPUTE_DTYPES",
    "ModuleCompute",
    "apply_compute",
    "autocast",
    "compute_dtype",
    "fp32_region",
    "parameter_dtype",
    "run_layer",
    "to_compute_dtype",
    "to_parameter_dtype",
]

COMPUTE_DTYPES: Mapping[str, torch.dtype] = MappingProxyType({"fp32": torch.float32, "bf16": torch.bfloat16})


class ModuleCompute(Protocol):
    """What ``apply_compute`` reads per module (``mimo.config.ModuleComputeConfig`` after ``compute_for``)."""

    @property
    def precision(self) -> str | None: ...

    @property
    def checkpoint_every(self) -> int: ...


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[precision]


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating parameter (fp32 when it has none)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _device_type(module: nn.Module) -> str:
    for parameter in module.parameters():
        return parameter.device.type
    return "cpu"


def autocast(precision: str, module: nn.Module) -> AbstractContextManager[Any]:
    """The context ``module`` runs its forward in: none at all for fp32, ``torch.autocast`` otherwise."""
    dtype = compute_dtype(precision)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=_device_type(module), dtype=dtype)


def fp32_region(device_type: str) -> AbstractContextManager[Any]:
    """Where a bf16 module computes its loss: autocast switched off, so every op (logsumexp) runs in fp32.
    Outside autocast (fp32 runs) nothing at all."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


def to_compute_dtype(outputs: dict[str, Tensor], precision: str) -> dict[str, Tensor]:
    """A stage's outputs as they travel: floating activations in the compute dtype (metadata keys untouched).

    The cast is part of the graph, so the gradient that comes back (in the compute dtype) flows into the stage's
    own fp32 activations."""
    dtype = compute_dtype(precision)
    if dtype == torch.float32:
        return outputs
    return {
        key: value.to(dtype) if value.is_floating_point() and not is_metadata_key(key) else value
        for key, value in outputs.items()
    }


def to_parameter_dtype(hidden: Tensor, precision: str, module: nn.Module) -> Tensor:
    """A received activation cast back to ``module``'s parameter dtype (its residual stream's) under bf16."""
    if compute_dtype(precision) == torch.float32:
        return hidden
    return hidden.to(parameter_dtype(module))


def run_layer(layer: Callable[..., Any], index: int, checkpoint_every: int, *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``, recomputed in the backward when ``checkpoint_every`` divides ``index``.

    Without grad (validation) nothing is kept anyway, so the layer runs plainly."""
    if checkpoint_every and index % checkpoint_every == 0 and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


def _slices(model: nn.Module, module: str) -> list[nn.Module]:
    """The family slices of ``module`` that ``model`` (a ``MimoModel`` or one stage) holds."""
    if module == LANGUAGE_MODULE:
        language = getattr(model, "language", None)
        return [] if language is None else [language]
    modalities = getattr(model, "modalities", None)
    if modalities is None or module not in modalities:
        return []
    return list(modalities[module].encoders.values())


def module_slices(model: nn.Module, module: str) -> list[nn.Module]:
    """The family slices of ``module`` that ``model`` holds (where its transformer layers live)."""
    return _slices(model, module)


def apply_compute(model: nn.Module, settings: Mapping[str, ModuleCompute]) -> None:
    """Set each held module's precision (on ``model.precisions``, read by its forward) and checkpointing (on
    its slices). A family without ``checkpoint_every`` asked to checkpoint is a ``ValueError`` naming it."""
    precisions = getattr(model, "precisions", None)
    if precisions is None:
        raise ValueError(f"{type(model).__name__} has no per-module precisions to set")
    for module, setting in settings.items():
        slices = _slices(model, module)
        if not slices:
            continue
        if setting.precision is not None:
            compute_dtype(setting.precision)  # a bad value fails here, not at the first forward
            precisions[module] = setting.precision
        for part in slices:
            if not hasattr(part, "checkpoint_every"):
                if setting.checkpoint_every:
                    raise ValueError(
                        f"module {module!r}: {type(part).__name__} does not support activation checkpointing"
                    )
                continue
            part.checkpoint_every = setting.checkpoint_every
