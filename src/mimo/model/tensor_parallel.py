"""Tensor-parallel plans of the built-in models: each ``TransformerBlock`` split Megatron-style over ``tp`` ranks.

Attention: the head-major fused ``qkv`` is split by output rows (``ColwiseParallel``: each rank gets whole heads
with their queries, keys and values) and ``attention_out`` by input columns (``RowwiseParallel``: partial sums,
added up by one all-reduce). The MLP likewise: the up projection by rows, the down projection by columns. The
block's input and output stay whole, replicated tensors on every rank (``use_local_output``), so the norms, the
residual stream and everything outside the blocks run as they do without tensor parallelism; each rank's
gradient of a replicated input is summed over the ranks by the same machinery in the backward.

The configs check before launch that ``tp`` divides what it splits (``check_tensor_parallel``, light: no torch).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

__all__ = ["LAYER_PLAN", "split", "vocabulary_plan"]

LAYER_PLAN: dict[str, type[ParallelStyle]] = {
    "layers.*.qkv": ColwiseParallel,
    "layers.*.attention_out": RowwiseParallel,
    "layers.*.mlp.0": ColwiseParallel,
    "layers.*.mlp.2": RowwiseParallel,
}
"""Every ``TransformerBlock`` of a slice's ``layers``: the parts split, and how."""


def vocabulary_plan() -> dict[str, ParallelStyle]:
    """The language model's token embedding split by vocabulary rows (each rank looks up the ids it holds, the
    rows are summed) and its head by vocabulary columns (the logits are gathered whole for the loss)."""
    return {
        "embedding.token": RowwiseParallel(input_layouts=Replicate()),
        "head": ColwiseParallel(output_layouts=Replicate()),
    }


def split(part: nn.Module, mesh: DeviceMesh, extra: dict[str, ParallelStyle] | None = None) -> None:
    """Split ``part``'s blocks (and the ``extra`` entries its slice holds) over the 1-D ``tp`` mesh, in place.

    ``src_data_rank=None``: every rank built the same whole weights (seeded by name, or read from one file), so
    each keeps its own part without a broadcast.
    """
    plan: dict[str, ParallelStyle] = {pattern: style() for pattern, style in LAYER_PLAN.items()}
    for name, style in (extra or {}).items():
        if _holds(part, name):
            plan[name] = style
    parallelize_module(part, mesh, plan, src_data_rank=None)


def _holds(part: nn.Module, name: str) -> bool:
    try:
        return part.get_submodule(name) is not None
    except AttributeError:
        return False
