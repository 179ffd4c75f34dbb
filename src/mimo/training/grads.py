"""Gradient finalisation: reduce over data parallelism, divide by the global token count, clip by global norm.

Backward runs on the *sum* of per-token losses, so after the data-parallel SUM every gradient is the gradient of
the global loss sum; dividing by the number of loss tokens in the whole global batch gives the gradient of the
global per-token mean, whatever the microbatching or the layout.

Gradients of parameters sharded by FSDP2 (``dp_shard``) are DTensors already summed over the module's
data-parallel ranks by FSDP; every function here works on each gradient's local tensor (the whole gradient when it
is a plain tensor, this rank's shard otherwise), so plain and sharded gradients mix in one fused kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def local_grad(parameter: nn.Parameter) -> Tensor:
    """The part of ``parameter``'s gradient this rank holds (a view: in-place changes reach the gradient)."""
    grad = parameter.grad
    return grad._local_tensor if isinstance(grad, DTensor) else grad  # the tensor itself: in-place ops reach it


def materialize_grads(params: Sequence[nn.Parameter]) -> None:
    """Give every parameter a gradient tensor laid out like the parameter (zeros where backward never reached it).

    A modality absent from a rank's microbatches leaves its gradients at None there, yet every replica must take
    part in the same all-reduce with the same tensors. A tensor-parallel parameter may get its gradient in
    another placement than its own (a vocabulary-split embedding gets a whole, replicated one): it is cut to the
    parameter's placement, so that every function here sees this rank's part of it.
    """
    for parameter in params:
        grad = parameter.grad
        if grad is None:
            parameter.grad = torch.zeros_like(parameter)
        elif isinstance(grad, DTensor) and grad.placements != parameter.placements:
            parameter.grad = grad.redistribute(parameter.device_mesh, parameter.placements)


def all_reduce_grads(params: Sequence[nn.Parameter], group: dist.ProcessGroup | None) -> None:
    """Sum the gradients over ``group`` (one flat buffer, one collective); a no-op without a group."""
    if group is None or dist.get_world_size(group) == 1 or not params:
        return
    grads = [local_grad(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def scale_grads(params: Sequence[nn.Parameter], factor: float) -> None:
    """Multiply every gradient by ``factor`` (one fused ``_foreach`` kernel per device and dtype)."""
    if params:
        torch._foreach_mul_([local_grad(parameter) for parameter in params], factor)


def squared_norm(params: Sequence[nn.Parameter], device: torch.device | None = None) -> torch.Tensor:
    """Sum of squared gradient entries, in fp32, on the gradients' device (0 for no parameters).

    Fused per-tensor norms (``_foreach_norm``), summed where they are: no host sync here.
    """
    if not params:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch._foreach_norm([local_grad(parameter) for parameter in params])  # gradients carry no graph
    return torch.stack(norms).float().pow(2).sum()


def squared_norms(params_by_group: Sequence[Sequence[nn.Parameter]], device: torch.device | None = None) -> Tensor:
    """fp32 ``[len(params_by_group)]``: each group's ``squared_norm``, bit for bit, from one ``_foreach_norm`` over
    every group's gradients (one fused call and one squaring instead of one of each per group: per-step overhead).

    Each group's squares are summed as a slice of the shared vector: the same elements in the same order as
    ``squared_norm``'s own vector, so the same sum; a group without parameters sums to 0.
    """
    flat = [local_grad(parameter) for params in params_by_group for parameter in params]
    if not flat:
        return torch.zeros(len(params_by_group), dtype=torch.float32, device=device)
    squares = torch.stack(torch._foreach_norm(flat)).float().pow(2)
    sums, offset = [], 0
    for params in params_by_group:
        sums.append(squares[offset : offset + len(params)].sum())
        offset += len(params)
    return torch.stack(sums)


def clip_coefficient(max_norm: float, total_norm: float) -> float:
    """The factor that brings a global norm down to at most ``max_norm`` (torch's clip_grad_norm_ rule), or 1."""
    return min(1.0, max_norm / (total_norm + 1e-6))


def clip_grads(params: Sequence[nn.Parameter], max_norm: float, total_norm: float) -> None:
    """Scale gradients so their global norm is at most ``max_norm`` (same rule as torch's clip_grad_norm_)."""
    coefficient = clip_coefficient(max_norm, total_norm)
    if coefficient < 1.0:
        scale_grads(params, coefficient)
