"""The run configuration: typed dataclasses loaded from YAML, with ``--set a.b=value`` overrides.

A recipe is a YAML file (see ``configs/``); every key maps to a field below and every field has a default, so a
recipe only says what differs. Unknown keys and bad values raise ``ValueError`` naming the key and the value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mimo.config_loading import build_dataclass
from mimo.data import SyntheticDataConfig
from mimo.model.configs import LANGUAGE_MODULE, MimoModelConfig


@dataclass(kw_only=True)
class OptimizerConfig:
    """One module's optimizer. Per-module entries in ``optim.modules`` start from ``optim.default``."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.0
    """SGD only."""

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(kw_only=True)
class LRScheduleConfig:
    """Linear warmup (step k < warmup_steps uses lr * (k + 1) / warmup_steps), then decay to
    ``min_lr_ratio * lr`` at the last step."""

    warmup_steps: int = 0
    decay: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(kw_only=True)
class OptimConfig:
    default: OptimizerConfig = field(default_factory=OptimizerConfig)
    modules: dict[str, OptimizerConfig] = field(default_factory=dict)
    """Per-module overrides, keyed by module name ("language", "images", ...)."""
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    clip_grad: float = 1.0
    """Clip by the global gradient norm over every module; 0 disables clipping."""
    freeze: list[str] = field(default_factory=list)
    """Frozen modules ("images") or parts ("images.encoders", "images.projection"): no gradients, no state."""

    def __post_init__(self) -> None:
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {self.clip_grad}")

    def for_module(self, module: str) -> OptimizerConfig:
        return self.modules.get(module, self.default)


Precision = Literal["fp32", "bf16"]
"""``train.precision`` values: fp32, or bf16 compute (autocast) over fp32 master weights."""


def _check_activation_checkpointing(owner: str, value: str | int | None) -> None:
    if value is None or value in ("none", "full"):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    raise ValueError(
        f"{owner}activation_checkpointing={value!r} is not 'none', 'full' or a positive integer k "
        "(recompute every k-th transformer layer)"
    )


@dataclass(kw_only=True)
class ModuleComputeConfig:
    """One module's compute settings; an entry of ``train.modules`` overrides ``train.precision`` and
    ``train.activation_checkpointing`` for that module (a field left out, or null, inherits the train-wide one)."""

    precision: Precision | None = None
    """``fp32`` or ``bf16`` (see ``TrainConfig.precision``)."""
    activation_checkpointing: str | int | None = None
    """``none``, ``full`` or k (see ``TrainConfig.activation_checkpointing``)."""

    def __post_init__(self) -> None:
        _check_activation_checkpointing("", self.activation_checkpointing)

    @property
    def checkpoint_every(self) -> int:
        """0: no recomputation; k: layers whose global index is a multiple of k (1: every layer)."""
        value = self.activation_checkpointing
        if value in (None, "none"):
            return 0
        return 1 if value == "full" else int(value)  # type: ignore[arg-type]


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 60
    global_batch_size: int = 16
    """Samples per optimizer step, over all data-parallel replicas and microbatches."""
    num_microbatches: int = 1
    """The global batch is cut into this many microbatches; the loss does not depend on it."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (NCCL), else CPU (gloo)."""
    collective_timeout_s: float = 300.0
    progress: bool = True
    """Show a progress bar (on the rank that logs)."""
    on_nonfinite: Literal["skip", "stop"] = "skip"
    """A non-finite loss or gradient: skip the update on every rank, or stop the run (exit code 1)."""
    profile: bool = False
    """Synchronise the device around every timed phase, so per-phase times are exact on a GPU (costs stalls);
    off, timers read the host clock only and the step's only host sync is its one reduction."""
    tensorboard: bool = False
    """Write TensorBoard scalars to <run_dir>/tensorboard (loss, gradient norms, learning rates, throughput,
    step time, idle share per rank, memory)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device, for MFU in the summary; None: measured with a matmul on CPU, unknown on GPU."""
    trace: bool = False
    """Record every rank's actions and phases on one clock into ``<run_dir>/trace.json`` (see ``mimo timeline``)."""
    trace_steps: list[int] | None = None
    """``[first, last]`` steps to trace, inclusive; negative counts from the end (``[-5, -1]``: the last five).
    None: steps 2-6, the first five after the warm-up step (clipped to the run)."""
    precision: Precision = "fp32"
    """``fp32``: everything in fp32, as the parity suite checks. ``bf16``: each module's forward runs under
    ``torch.autocast`` in bfloat16 while parameters, gradients, their reduction and the optimizer stay fp32 and
    the per-token loss is computed in fp32; activations cross pipeline hops and bridges in bfloat16.
    ``train.modules.<module>.precision`` overrides it per module."""
    activation_checkpointing: str | int = "none"
    """Recompute transformer layers in the backward instead of keeping their activations: ``none``, ``full``
    (every layer) or an integer k (the layers whose global index is a multiple of k: 0, k, 2k, ...), with
    ``torch.utils.checkpoint`` (non-reentrant). Losses and gradients do not change.
    ``train.modules.<module>.activation_checkpointing`` overrides it per module."""
    modules: dict[str, ModuleComputeConfig] = field(default_factory=dict)
    """Per-module overrides of ``precision`` and ``activation_checkpointing``, keyed by module name
    (``{images: {precision: fp32}, language: {activation_checkpointing: full}}``)."""

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch_size", "num_microbatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.num_microbatches:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be divisible by "
                f"num_microbatches ({self.num_microbatches})"
            )
        if self.collective_timeout_s <= 0:
            raise ValueError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        if self.trace_steps is not None:
            self._check_trace_steps()
        _check_activation_checkpointing("", self.activation_checkpointing)

    def compute_for(self, module: str) -> ModuleComputeConfig:
        """``module``'s compute settings: its ``train.modules`` entry over the train-wide ones (no None left)."""
        entry = self.modules.get(module, ModuleComputeConfig())
        return ModuleComputeConfig(
            precision=entry.precision if entry.precision is not None else self.precision,
            activation_checkpointing=(
                entry.activation_checkpointing if entry.activation_checkpointing is not None
                else self.activation_checkpointing
            ),
        )

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // self.num_microbatches

    @property
    def trace_window(self) -> tuple[int, int]:
        """The traced steps ``(first, last)``, inclusive, as step numbers (1-based)."""
        if self.trace_steps is None:
            return (min(2, self.steps), min(6, self.steps))
        first, last = (step if step > 0 else self.steps + 1 + step for step in self.trace_steps)
        return first, last

    def _check_trace_steps(self) -> None:
        steps = self.trace_steps or []
        if len(steps) != 2 or 0 in steps:
            raise ValueError(f"trace_steps must be [first, last] with non-zero steps, got {steps}")
        first, last = self.trace_window
        if not 1 <= first <= last <= self.steps:
            raise ValueError(f"trace_steps {steps} must name steps first <= last within 1..{self.steps}")


@dataclass(kw_only=True)
class CheckpointConfig:
    """When and where checkpoints are written (``<dir>/step_XXXXXXXX``, with a ``latest`` pointer)."""

    dir: str | None = None
    """Checkpoint root; None: ``<run_dir>/checkpoints``."""
    every_steps: int = 0
    """Save every N steps; 0: only at the end (and on SIGTERM)."""
    at_end: bool = True
    on_preemption: bool = True
    """Save when SIGTERM stops the run."""
    keep: int = 3
    """Keep the newest K checkpoints, delete older ones."""
    verify: Literal["checksums", "sizes"] = "checksums"
    """Before loading, check every file's size and sha256 (or only sizes, faster for huge checkpoints)."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclass(kw_only=True)
class ModuleLayoutConfig:
    """Where one module runs: ``dp`` replicas of ``pp`` pipeline stages on ranks from ``rank_offset``, each
    replica sharded over ``dp_shard`` ranks (FSDP2) and each layer split over ``tp`` ranks; the module spans
    ``pp * dp * dp_shard * tp`` ranks."""

    dp: int = 1
    pp: int = 1
    tp: int = 1
    """Split each layer of the module over this many ranks (tensor parallelism: heads and MLP width, and the
    language model's vocabulary); they read the same samples, so the module spans ``pp * dp * dp_shard * tp``
    ranks."""
    rank_offset: int = 0
    dp_shard: int = 1
    """Shard parameters, gradients and optimizer state over this many ranks per replica (FSDP2, each layer a
    unit); the data-parallel size is ``dp * dp_shard``, HSDP when both exceed 1."""
    layers_per_stage: list[int] | None = None
    """Transformer layers per pipeline stage; None spreads them evenly (earlier stages take the extra)."""


@dataclass(kw_only=True)
class MimoConfig:
    """A whole run."""

    run_dir: str = "runs/default"
    """Where metrics.jsonl and (unless checkpoint.dir says otherwise) checkpoints go."""
    model: MimoModelConfig = field(default_factory=MimoModelConfig)
    data: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    layout: dict[str, ModuleLayoutConfig] = field(default_factory=dict)
    """Per-module layouts. Empty: every module on every rank (colocated), data parallel over all processes."""
    topology: dict[str, list[str]] | None = None
    """Activation edges ``module -> [successors]``; None: every modality feeds "language"."""

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or str(Path(self.run_dir) / "checkpoints")

    def _encoders_of(self, module: str) -> dict[str, Any]:
        modality = self.model.modalities.get(module)
        return dict(modality.encoders) if modality is not None else {}

    def _check_tensor_parallel(self, module: str, tp: object) -> None:
        """Before launch: ``tp`` must be a positive integer dividing what each of the module's parts splits."""
        if not isinstance(tp, int) or isinstance(tp, bool) or tp <= 0:
            raise ValueError(f"layout.{module}.tp must be a positive integer, got {tp!r}")
        if tp == 1:
            return
        encoders = self._encoders_of(module)
        parts = ({"model.language": self.model.language} if module == LANGUAGE_MODULE else
                 {f"model.modalities.{module}.encoders.{name}": spec for name, spec in encoders.items()})
        for owner, spec in parts.items():
            check = getattr(spec, "check_tensor_parallel", None)
            if check is None:
                raise ValueError(f"layout.{module}.tp={tp}: {owner} ({type(spec).__name__}) does not support tensor "
                                 "parallelism; use tp 1 for this module")
            check(tp, owner=owner)

    def __post_init__(self) -> None:
        modules = self.model.module_names
        if self.layout and set(self.layout) != set(modules):
            unknown = sorted(set(self.layout) - set(modules))
            missing = sorted(set(modules) - set(self.layout))
            raise ValueError(
                f"layout must name every module {modules} or none; unknown: {unknown}, missing: {missing}"
            )
        for name, entry in self.layout.items():
            shard = entry.dp_shard
            if not isinstance(shard, int) or isinstance(shard, bool) or shard <= 0:
                raise ValueError(f"layout.{name}.dp_shard must be a positive integer, got {shard!r}")
            hf_encoders = [encoder for encoder, spec in self._encoders_of(name).items() if hasattr(spec, "hf")]
            if shard > 1 and hf_encoders:
                # Their slices skip the layers for a microbatch with no items, so one shard rank would skip the
                # layers' FSDP collectives that its peers run.
                raise ValueError(
                    f"layout.{name}.dp_shard={shard}: sharding Hugging Face encoders ({', '.join(hf_encoders)}) is "
                    "not supported yet; shard the language model, or use dp for this module"
                )
            self._check_tensor_parallel(name, entry.tp)
        for key in self.optim.modules:
            if key not in modules:
                raise ValueError(f"optim.modules.{key}: unknown module {key!r}; modules are {modules}")
        for key in self.train.modules:
            if key not in modules:
                raise ValueError(f"train.modules.{key}: unknown module {key!r}; modules are {modules}")
        for entry in self.optim.freeze:
            module, _, part = entry.partition(".")
            if module not in modules or (part and (module == LANGUAGE_MODULE or part not in ("encoders", "projection"))):
                raise ValueError(
                    f"optim.freeze entry {entry!r} is not a module ({', '.join(modules)}) "
                    f"or a modality part ('<modality>.encoders', '<modality>.projection')"
                )
        if self.data.source == "synthetic" and self.data.seq_length > self.model.language.max_seq_len:
            raise ValueError(
                f"data.seq_length ({self.data.seq_length}) exceeds model.language.max_seq_len "
                f"({self.model.language.max_seq_len})"
            )


def load_config(path: str | Path, overrides: list[str] | None = None) -> MimoConfig:
    """Read a YAML recipe, apply ``a.b=value`` overrides (values parsed as YAML), validate, return it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level, got {raw!r}")
    for override in overrides or []:
        apply_override(raw, override)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> MimoConfig:
    """Validate plain data into a MimoConfig (per-module optimizer entries inherit from ``optim.default``)."""
    return build_dataclass(MimoConfig, _inherit_optimizer_defaults(raw))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``3``, ``0.1``, ``[images]``)."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {override!r} must look like key.subkey=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"override {override!r}: value {text!r} is not valid YAML") from None
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {part!r} holds {child!r}, not a mapping")
        node = child
    node[leaf] = value


def _inherit_optimizer_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    optim = raw.get("optim")
    if not isinstance(optim, dict) or not isinstance(optim.get("modules"), dict):
        return raw
    default = optim.get("default") or {}
    if not isinstance(default, dict):
        return raw
    raw = copy.deepcopy(raw)
    raw["optim"]["modules"] = {
        name: {**default, **entry} if isinstance(entry, dict) else entry
        for name, entry in optim["modules"].items()
    }
    return raw
