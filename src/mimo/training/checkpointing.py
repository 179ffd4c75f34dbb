"""Saving and resuming a run with ``torch.distributed.checkpoint``, under keys that do not depend on the layout.

What a checkpoint holds (``<root>/step_XXXXXXXX/``):

- ``dcp/``: tensors only, keyed by full parameter names, so any layout can load what any other saved:
  ``model.<param>`` (trainable parameters), ``optim.<param>.<state>`` (e.g. ``exp_avg``), and
  ``rng.<module>.stage<s>.dp<d>`` (the CPU generator state of each rank, restored when the layout matches; the
  built-in model draws no random numbers while training, so this only matters for user code such as dropout).
- ``meta.json``: the train state (step, consumed samples and tokens), optimizer steps taken (which fixes every LR
  schedule), the config, the layout it was saved with, and where frozen weights come from.
- ``manifest.json``: size and sha256 of every file, written last; the folder is renamed into place only then.

Frozen parameters are *referenced*, not saved: they never change, so they equal the run's initialization (the seed,
or the ``--init-from`` file recorded with its sha256), which a resume rebuilds; only trainable parameters are stored.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mimo.model.tied import parameter_names
from mimo.checkpoint import CheckpointError, CheckpointStore, check_compatible, load_tensors, new_nonce, read_json
from mimo.checkpoint import read_tensor_shapes, save_tensors, tensor_specs, write_json
from mimo.checkpoint.manifest import path_sha256
from mimo.config import MimoConfig
from mimo.distributed import raise_if_any_rank_failed
from mimo.model.configs import LANGUAGE_MODULE

if TYPE_CHECKING:
    from mimo.training.trainer import Trainer

logger = logging.getLogger(__name__)

FORMAT = "mimo-checkpoint"
VERSION = 2
"""2: the built-in blocks' fused ``qkv`` is head-major (``[q k v]`` per head); version 1 stored ``[q | k | v]``."""
_OPTIMIZER_STATE_KEYS = {torch.optim.AdamW: ("step", "exp_avg", "exp_avg_sq"), torch.optim.SGD: ("momentum_buffer",)}


def _names(model: nn.Module) -> dict[nn.Parameter, str]:
    # Tied copies (the head of a pipelined language model) are stored under their canonical parameter's name.
    return parameter_names(model)


def _rng_key(trainer: Trainer) -> str:
    role = trainer.engine.role
    module = "+".join(trainer.engine.modules)
    first = trainer.engine.modules[0]
    # Tensor-parallel rank 0 keeps the key of a layout without tp, so a checkpoint reshards between the two.
    tp = f".tp{role.tp_rank[first]}" if role.tp_rank[first] else ""
    return f"rng.{module}.stage{role.stages[first]}.dp{role.dp_rank[first]}{tp}"


def tensor_state(trainer: Trainer) -> dict[str, Tensor]:
    """This rank's tensors to save: trainable weights, optimizer state, RNG state."""
    names = _names(trainer.model)
    state = {f"model.{names[p]}": p.detach() for p in trainer.params}
    for optimizer in trainer.optimizers.optimizers.values():
        for parameter, entries in optimizer.state.items():
            for key, value in entries.items():
                if value is not None:
                    tensor = value if isinstance(value, Tensor) else torch.tensor(value)
                    state[f"optim.{names[parameter]}.{key}"] = tensor
    state[_rng_key(trainer)] = torch.get_rng_state()
    return state


def _optimizer_template(trainer: Trainer) -> dict[str, Tensor]:
    """Freshly allocated optimizer state tensors for every trainable parameter, to load into."""
    names = _names(trainer.model)
    template = {}
    for optimizer in trainer.optimizers.optimizers.values():
        keys = _OPTIMIZER_STATE_KEYS.get(type(optimizer), ())
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for key in keys:
                    value = torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros_like(parameter)
                    template[f"optim.{names[parameter]}.{key}"] = value
    return template


class Checkpointer:
    """Saves and loads one run's checkpoints under ``root``; every method is called on every rank."""

    def __init__(self, trainer: Trainer, root: str | Path, *, keep: int, verify_checksums: bool,
                 init_source: dict[str, Any]) -> None:
        self.trainer = trainer
        self.store = CheckpointStore(root)
        self.keep, self.verify_checksums = keep, verify_checksums
        self.init_source = init_source

    # saving ----------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the current step; returns its final folder (on every rank)."""
        step = self.trainer.state.train_state.step
        staging = self.store.staging_dir(step, _broadcast(new_nonce()))
        save_tensors(tensor_state(self.trainer), staging / "dcp")
        if _rank() == 0:
            write_json(staging / "meta.json", self._meta())
        _barrier()
        final = self.store.root / staging.name  # placeholder until committed
        if _rank() == 0:
            final = self.store.commit(staging, step)
            self.store.prune(self.keep)
        final = Path(_broadcast(str(final)))
        _barrier()
        return final

    def _meta(self) -> dict[str, Any]:
        trainer = self.trainer
        return {
            "format": FORMAT,
            "version": VERSION,
            "train_state": trainer.state.train_state.state_dict(),
            "optimizer_steps": trainer.state.train_state.step - trainer.state.train_state.skipped_steps,
            "config": dataclasses.asdict(trainer.cfg),
            "layout": {name: dataclasses.asdict(layout) for name, layout in trainer.plan.layouts.items()},
            "frozen_parameters_from": self.init_source,
            "data": {"seed": trainer.cfg.data.seed, **({"num_samples": trainer.loader.num_samples}
                                                       if trainer.loader is not None else {})},
        }

    # loading ---------------------------------------------------------------------------------------------
    def load(self, spec: str | Path) -> Path:
        """Resume from ``spec`` ("latest", a checkpoint folder, or a root holding ``latest``)."""
        folder = self._resolve_and_verify(spec)
        present, error = {}, None
        try:
            meta = read_json(folder / "meta.json")
            if meta.get("format") == FORMAT and meta.get("version") == 1:
                raise CheckpointError(f"{folder / 'meta.json'}: a {FORMAT} v1 checkpoint, whose built-in attention "
                                      f"weights are laid out as [q | k | v]; this mimo reads v{VERSION} (head-major)")
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise CheckpointError(f"{folder / 'meta.json'}: not a {FORMAT} v{VERSION} checkpoint")
            present = self._tensors_to_load(folder, meta)
            self._restore_position(meta)
        except ValueError as caught:
            error = caught
        raise_if_any_rank_failed(error)
        self._load_tensors(folder / "dcp", present)
        return folder

    def _restore_position(self, meta: dict[str, Any]) -> None:
        """Train state, LR schedules and the data position (the loader refuses another seed or dataset)."""
        trainer = self.trainer
        trainer.state.train_state.load_state_dict(meta["train_state"])
        trainer.optimizers.set_steps_taken(int(meta["optimizer_steps"]))
        if trainer.loader is not None:
            trainer.loader.load_state_dict(
                {"consumed_samples": trainer.state.train_state.consumed_samples, **meta.get("data", {})}
            )

    def _resolve_and_verify(self, spec: str | Path) -> Path:
        error, folder = None, None
        if _rank() == 0:
            try:
                folder = self.store.resolve(spec)
                self.store.verify(folder, checksums=self.verify_checksums)
            except CheckpointError as caught:
                error = str(caught)
        error, folder = _broadcast((error, str(folder) if folder else None))
        if error is not None:
            raise CheckpointError(error)
        return Path(folder)

    def _tensors_to_load(self, folder: Path, meta: dict[str, Any]) -> dict[str, Tensor]:
        """This rank's tensors that the checkpoint holds, to load into (checked for shape and source first).

        Every parameter the checkpoint has is loaded, frozen or not, so freezing a trained module on resume
        keeps its trained weights. A parameter it lacks was frozen when saved and equals its initialization,
        which is only true if this run initializes it from the same seed or file.
        """
        found = read_tensor_shapes(folder / "dcp")
        model_state = {f"model.{name}": p.data for p, name in _names(self.trainer.model).items()}
        present = {k: v for k, v in {**model_state, **_optimizer_template(self.trainer)}.items() if k in found}
        check_compatible(tensor_specs(present), found, source=f"checkpoint {folder}")
        absent = sorted(k for k in model_state if k not in found)
        saved_source = meta.get("frozen_parameters_from", {})
        if absent and _identity(saved_source) != _identity(self.init_source):
            raise CheckpointError(
                f"{folder} does not hold {len(absent)} parameters (e.g. {absent[:3]}): they were frozen and are "
                f"referenced to their initialization {saved_source}, but this run initializes from "
                f"{self.init_source}; resume with the same seed, --init-from file and Hugging Face folders"
            )
        if absent:
            logger.info("%d parameters were frozen when saved: taken from the initialization", len(absent))
        rng_key = _rng_key(self.trainer)
        if rng_key in found:
            present[rng_key] = torch.get_rng_state()
        return present

    def _load_tensors(self, dcp_dir: Path, present: dict[str, Tensor]) -> None:
        rng_key = _rng_key(self.trainer)
        load_tensors(present, dcp_dir)
        if rng_key in present:
            torch.set_rng_state(present[rng_key])
        else:
            logger.info("checkpoint has no RNG state for %s (different layout): keeping this run's seed", rng_key)
        self._apply_optimizer_state(present)

    def _apply_optimizer_state(self, loaded: dict[str, Tensor]) -> None:
        names = _names(self.trainer.model)
        for optimizer in self.trainer.optimizers.optimizers.values():
            keys = _OPTIMIZER_STATE_KEYS.get(type(optimizer), ())
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    entries = {k: loaded[f"optim.{names[parameter]}.{k}"] for k in keys
                               if f"optim.{names[parameter]}.{k}" in loaded}
                    if entries:
                        optimizer.state[parameter] = entries


def _identity(source: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What makes two initializations equal: the seed, the content of the --init-from file (not its path) and
    the content of the Hugging Face folders that frozen modules load from."""
    return source.get("seed"), source.get("init_from_sha256"), source.get("hf_sha256")


def frozen_hf_fingerprints(cfg: MimoConfig) -> dict[str, str] | None:
    """sha256 of every Hugging Face folder a frozen module (or part) loads its weights from, by folder; None
    when nothing frozen comes from one. Frozen weights are not saved, so a resume must find the same folders."""
    folders: set[str] = set()
    for entry in cfg.optim.freeze:
        module, _, part = entry.partition(".")
        if module == LANGUAGE_MODULE:
            sources: list[Any] = [cfg.model.language]
        else:
            sources = [] if part == "projection" else list(cfg.model.modalities[module].encoders.values())
        folders.update(source.hf for source in sources if hasattr(source, "hf"))
    return {folder: path_sha256(Path(folder)) for folder in sorted(folders)} or None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
