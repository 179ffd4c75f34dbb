"""Consolidated weights as one safetensors file whose tensor names do not depend on the layout.

Every rank holds the part of the model its layout gives it, under the full model's names
(``language.layers.3.attention...``, ``modalities.images...``); replica 0 of each stage contributes its tensors and
rank 0 writes the union, so files from any two layouts can be compared name by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from mimo.checkpoint.errors import format_problems
from mimo.model.weights_format import EXPORT_METADATA, check_qkv_layout
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from mimo.training.trainer import Trainer


def save_safetensors(tensors: dict[str, Tensor], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cloned: tied weights (embedding and head) share memory, which safetensors refuses to write twice.
    contiguous = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in sorted(tensors.items())}
    save_file(contiguous, str(path), metadata=EXPORT_METADATA)
    return path



def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; a missing file, a directory or another kind of file is a ValueError."""
    from safetensors import SafetensorError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"weights file {str(path)!r} is a directory, not a safetensors file")
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"weights file {str(path)!r} is not a safetensors file ({error})") from None


def export_consolidated(trainer: Trainer, path: str | Path) -> Path | None:
    """Gather the whole model's weights from every rank and write them on rank 0 (returns None elsewhere)."""
    merged = gather_consolidated(trainer)
    return None if merged is None else save_safetensors(merged, path)


def gather_consolidated(trainer: Trainer) -> dict[str, Tensor] | None:
    """The whole model's weights on rank 0, gathered from every rank's part (None on the other ranks)."""
    role = trainer.engine.role
    # Per module: a rank may hold replica 0 of one module and another replica of the next (an encoder sharing
    # the ranks of a pipelined language model).
    keeps = {module for module in trainer.engine.modules if role.dp_rank[module] == 0 and role.tp_rank[module] == 0}
    # Every rank of a sharded or tensor-parallel stage takes part in gathering its full tensors (collective,
    # state_dict order); data- and tensor-parallel rank 0 keeps them, the other ranks copy nothing to the CPU.
    state = trainer.model.state_dict()
    local: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if _module_of(name) in keeps:
            local[name] = _full(tensor)
        elif isinstance(tensor, DTensor):
            tensor.full_tensor()
    if not dist.is_initialized():
        return local
    world = dist.get_world_size()
    gathered: list[dict[str, Tensor]] | None = [{} for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if gathered is None:
        return None
    merged: dict[str, Tensor] = {}
    for part in gathered:
        duplicated = sorted(set(part) & set(merged))
        if duplicated:
            raise RuntimeError(f"two ranks export the same tensors {duplicated[:5]}: the layout overlaps")
        merged.update(part)
    return merged


def _module_of(name: str) -> str:
    """The module a state-dict entry belongs to: ``language.*`` or ``modalities.<name>.*``."""
    head, _, rest = name.partition(".")
    return rest.partition(".")[0] if head == "modalities" else head


def _full(tensor: Tensor) -> Tensor:
    """The whole tensor on the CPU: a DTensor (sharded by FSDP2, split by tensor parallelism) is gathered over its
    mesh first."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def load_consolidated(model: nn.Module, path: str | Path) -> None:
    """Copy this rank's parameters from a consolidated safetensors file (the format ``export`` writes) or a
    folder written by ``--export-hf``.

    Tensors of other stages or modules in the file are ignored; a parameter of this rank that the file lacks, or
    holds with another shape, is an error listing every such tensor.
    """
    from mimo.model.hf.export import is_hf_export, read_hf_export

    if is_hf_export(path):
        tensors = read_hf_export(path)
    else:
        tensors = load_safetensors(path)
        check_qkv_layout(path, tensors)
    problems = []
    for name, parameter in model.named_parameters():
        if name not in tensors:
            problems.append(f"{name}: missing from the file")
        elif tuple(tensors[name].shape) != tuple(parameter.shape):
            problems.append(f"{name}: file has {list(tensors[name].shape)}, model has {list(parameter.shape)}")
    if problems:
        # Shape mismatches before missing tensors: a wrong shape is the more telling clue.
        problems.sort(key=lambda line: "missing" in line)
        raise ValueError(format_problems(f"{path} does not fit this model ({len(problems)} tensors):", problems))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(tensors[name].to(dtype=parameter.dtype, device=parameter.device))
