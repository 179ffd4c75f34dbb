"""Read only the tensors a rank needs from a Hugging Face model folder, and build modules without allocating.

A rank that holds one pipeline stage builds its modules with parameters on the meta device (no memory), then
materialises exactly its own parameters from the folder's safetensors files, opened lazily with ``safe_open``:
no rank ever reads another stage's tensors. Buffers (rotary frequencies, position ids) are built for real, since
they are small and usually not saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

__all__ = ["WeightFiles", "empty_parameters", "materialize"]

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


class WeightFiles:
    """Where each tensor of an HF model folder lives (one ``model.safetensors`` or a sharded index)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = self.folder / _INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of: dict[str, Path] = {name: self.folder / file for name, file in weight_map.items()}
        elif (self.folder / _SINGLE_FILE).is_file():
            with safe_open(str(self.folder / _SINGLE_FILE), framework="pt") as handle:
                self.file_of = {name: self.folder / _SINGLE_FILE for name in handle.keys()}
        else:
            raise ValueError(f"{self.folder} has no {_SINGLE_FILE} or {_INDEX_FILE}: not a safetensors HF model")
        self.opened: list[str] = []
        """Names read so far, in order (tests check that a rank read only its own stage)."""

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def read(self, names: Iterable[str]) -> dict[str, Tensor]:
        """The named tensors, each file opened once; a name the folder lacks is a ValueError listing them."""
        names = list(names)
        missing = [name for name in names if name not in self.file_of]
        if missing:
            raise ValueError(f"{self.folder} lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.file_of[name], []).append(name)
        tensors = {}
        for file, file_names in by_file.items():
            with safe_open(str(file), framework="pt") as handle:
                for name in file_names:
                    tensors[name] = handle.get_tensor(name)
        self.opened += names
        return tensors


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Inside, every parameter a module registers is created on the meta device; buffers stay real."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        # A parameter already on meta is kept as is: re-wrapping it would untie ``b.weight = a.weight``.
        if param is not None and not param.is_meta:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def materialize(
    module: nn.Module,
    files: WeightFiles,
    *,
    source_name: Callable[[str], str],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> None:
    """Give every meta parameter of ``module`` its tensor from ``files`` (``source_name`` maps our name to the
    folder's), cast to ``dtype``. Parameters already real (e.g. freshly initialised rows) are left alone."""
    # A tied parameter has several names (remove_duplicate=False lists them all): it is read once, under its
    # first name, and every owner gets the same new Parameter, so the tie survives.
    shared: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.is_meta:
            shared.setdefault(id(p), (p, []))[1].append(name)
    wanted = {key: source_name(names[0]) for key, (_, names) in shared.items()}
    tensors = files.read(dict.fromkeys(wanted.values()))
    for key, source in wanted.items():
        old, names = shared[key]
        value = tensors[source]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(
                f"{files.folder}: tensor {source} has shape {list(value.shape)}, the model expects {list(old.shape)}"
            )
        new = nn.Parameter(value.to(device=device, dtype=dtype), requires_grad=old.requires_grad)
        for name in names:
            owner_name, _, local = name.rpartition(".")
            module.get_submodule(owner_name)._parameters[local] = new
