"""Tensor parallelism (DTensor) for the Hugging Face slices: the layer plans and the head-count fix-ups.

Megatron-style: in each attention block the q/k/v projections are split by output features (whole heads per
rank, ``ColwiseParallel``) and the output projection by input features (``RowwiseParallel``, whose all-reduce
gives every rank the full result); the MLP the same way (up/gate colwise, down rowwise). Every style keeps
``use_local_output=True``, so between the projections a layer sees plain tensors holding only its local heads,
and a slice's inputs and outputs stay plain tensors replicated over the ``tp`` ranks. Parameters outside the
plan (norms, position embeddings, convolutions, rotary buffers) stay plain tensors, replicated.

transformers views q/k/v with ``-1`` heads in Llama, Qwen2, CLIP and SigLIP, so the local head count follows
from the local width; Whisper views k/v with ``self.num_heads``, so ``localize_heads`` divides such counts. GQA's
``num_key_value_groups`` is a ratio and stays as it is when both head counts are divided by ``tp``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

__all__ = [
    "TP_DIM",
    "decoder_layer_plan",
    "encoder_layer_plan",
    "localize_heads",
    "parallelize",
    "prefixed",
    "tp_size",
]

TP_DIM = "tp"
"""The one dimension name of the mesh ``apply_tensor_parallel`` takes."""

_HEAD_COUNTS = ("num_heads", "num_key_value_heads")
"""Attention attributes that count heads (not all exist on every family); read by some forwards."""


def tp_size(module: nn.Module, mesh: DeviceMesh, owner: str) -> int:
    """The size of ``mesh``, after checking it is the 1-D ``("tp",)`` mesh and ``module`` is not parallel yet."""
    if mesh.ndim != 1 or mesh.mesh_dim_names != (TP_DIM,):
        raise ValueError(
            f"{owner}: tensor parallelism needs a 1-D mesh named ({TP_DIM!r},), got a {mesh.ndim}-D mesh named "
            f"{mesh.mesh_dim_names}"
        )
    if any(isinstance(p, DTensor) for p in module.parameters()):
        # A second call would shard the shards and divide the head counts again.
        raise ValueError(f"{owner}: tensor parallelism is already applied")
    return mesh.size()


def decoder_layer_plan() -> dict[str, ParallelStyle]:
    """Plan for one Llama/Qwen2-style decoder layer (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``).

    Fresh style objects on every call, rather than shared module-level ones.
    """
    return {
        **{f"self_attn.{name}": ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")},
        "self_attn.o_proj": RowwiseParallel(),
        **{f"mlp.{name}": ColwiseParallel() for name in ("gate_proj", "up_proj")},
        "mlp.down_proj": RowwiseParallel(),
    }


def encoder_layer_plan(mlp_prefix: str) -> dict[str, ParallelStyle]:
    """Plan for one CLIP/SigLIP (``mlp_prefix="mlp."``) or Whisper (``""``) encoder layer:
    ``self_attn.{q,k,v}_proj`` colwise, ``self_attn.out_proj`` rowwise, ``fc1`` colwise, ``fc2`` rowwise."""
    return {
        **{f"self_attn.{name}": ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")},
        "self_attn.out_proj": RowwiseParallel(),
        f"{mlp_prefix}fc1": ColwiseParallel(),
        f"{mlp_prefix}fc2": RowwiseParallel(),
    }


def prefixed(prefix: str, plan: dict[str, ParallelStyle]) -> dict[str, ParallelStyle]:
    """``plan`` for the submodule at ``prefix`` (e.g. ``model.layers.3``), as names relative to its owner."""
    return {f"{prefix}.{name}": style for name, style in plan.items()}


def localize_heads(attention: nn.Module, tp: int) -> None:
    """Divide the head-count attributes ``attention`` has by ``tp``: its forward then sees only local heads."""
    for name in _HEAD_COUNTS:
        value = getattr(attention, name, None)
        if isinstance(value, int):
            # The config's check_tensor_parallel ran first, so the division is exact.
            setattr(attention, name, value // tp)


def parallelize(module: nn.Module, mesh: DeviceMesh, *, plan: dict[str, ParallelStyle],
                attentions: Iterable[nn.Module]) -> None:
    """Apply ``plan`` (names relative to ``module``) on ``mesh`` and localize the head counts of ``attentions``.

    The caller has checked the mesh (``tp_size``) and that its size divides every split size.
    """
    # src_data_rank=None: every rank read the same whole weights from the folder, so each keeps its own part
    # without a scatter from rank 0.
    parallelize_module(module, mesh, plan, src_data_rank=None)
    for attention in attentions:
        localize_heads(attention, mesh.size())
