"""The parity oracle: one process, the plain model, the whole global batch, plain SGD written out by hand.

It shares no code with the trainer beyond the model and the sample order: the loss is the global per-token mean
computed in one expression, gradients come from one ``torch.autograd.grad`` call, clipping and the SGD update
are written here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from mimo.config import MimoConfig, config_from_dict
from mimo.data import LOSS_MASK, MicrobatchLoader, SyntheticMimoDataset, collate
from mimo.model import MimoModel
from mimo.training.optim import module_of


def reference_run(raw_config: dict[str, Any], steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Per-step losses and the final weights (full-model names) of training the plain model."""
    cfg = config_from_dict(copy.deepcopy(raw_config))
    _require_plain_sgd(cfg)
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    for name in cfg.optim.freeze:
        for parameter in module_of(model, name).parameters():
            parameter.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    order = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                             seed=cfg.data.seed)
    losses = []
    for _ in range(steps):
        (indices,) = order.step_indices()
        order.next_step()
        batch = collate([dataset[i] for i in indices])
        per_token = model(**batch)
        mask = batch[LOSS_MASK]
        loss = (per_token * mask).sum() / mask.sum()
        losses.append(loss.item())
        gradients = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        gradients = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, gradients)]
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in gradients))
        scale = min(1.0, cfg.optim.clip_grad / (norm + 1e-6)) if cfg.optim.clip_grad > 0 else 1.0
        with torch.no_grad():
            for (name, p), g in zip(params, gradients):
                p -= cfg.optim.for_module(name.split(".")[1] if name.startswith("modalities.") else "language").lr * scale * g
    return losses, {name: t.detach().clone() for name, t in model.state_dict().items()}


def _require_plain_sgd(cfg: MimoConfig) -> None:
    for module in cfg.model.module_names:
        opt = cfg.optim.for_module(module)
        assert opt.name == "sgd" and opt.momentum == 0 and opt.weight_decay == 0, f"reference needs plain SGD: {opt}"
    schedule = cfg.optim.lr_schedule
    assert schedule.decay == "constant" and schedule.warmup_steps == 0, f"reference needs a constant lr: {schedule}"


# --- Optimizers beyond plain SGD, and the gradient norm, for the clipping and AdamW cases ---------------------


@dataclass
class ReferenceResult:
    losses: list[float]
    weights: dict[str, torch.Tensor]
    """Final weights under full mimo names."""
    grad_norms: list[float]
    """Global gradient norm of each step, before clipping."""


def module_name(parameter_name: str) -> str:
    """``language`` or the modality that a full parameter name belongs to (for its optimizer config)."""
    return parameter_name.split(".")[1] if parameter_name.startswith("modalities.") else "language"


class ReferenceOptimizer:
    """Clip by one global norm, then plain SGD written out (``p -= lr * g``) or ``torch.optim.AdamW`` per module.

    The learning rate of step k is ``lr * (k + 1) / warmup`` for ``k < warmup``, then ``lr`` (decay "constant"
    only), set by hand before each step; no scheduler object is involved.
    """

    def __init__(self, cfg: MimoConfig, params: list[tuple[str, torch.Tensor]]) -> None:
        schedule = cfg.optim.lr_schedule
        assert schedule.decay == "constant", f"the reference knows only a constant lr after warmup: {schedule}"
        self.cfg, self.params, self.warmup, self.steps = cfg, params, schedule.warmup_steps, 0
        self.configs = {name: cfg.optim.for_module(module_name(name)) for name, _ in params}
        self.adamw: dict[str, torch.optim.AdamW] = {}
        for name, p in params:
            opt = self.configs[name]
            if opt.name == "sgd":
                assert opt.momentum == 0 and opt.weight_decay == 0, f"the reference needs plain SGD: {opt}"
            else:  # one AdamW per parameter: same math as one per module (AdamW is elementwise)
                self.adamw[name] = torch.optim.AdamW([p], lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                                     weight_decay=opt.weight_decay)

    def lr_factor(self) -> float:
        return (self.steps + 1) / self.warmup if self.steps < self.warmup else 1.0

    @torch.no_grad()
    def step(self, gradients: list[torch.Tensor | None]) -> float:
        """Apply one update from the gradients of the global mean loss; returns the norm before clipping."""
        gradients = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(self.params, gradients)]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gradients))
        clip = self.cfg.optim.clip_grad
        scale = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        factor = self.lr_factor()
        for (name, p), g in zip(self.params, gradients):
            opt = self.configs[name]
            if opt.name == "sgd":
                p -= opt.lr * factor * scale * g
            else:
                optimizer = self.adamw[name]
                optimizer.param_groups[0]["lr"] = opt.lr * factor
                p.grad = g * scale
                optimizer.step()
                p.grad = None
        self.steps += 1
        return norm


def reference_training(raw_config: dict[str, Any], steps: int) -> ReferenceResult:
    """``reference_run`` with any ``ReferenceOptimizer`` (SGD or AdamW, warmup) and the gradient norms."""
    cfg = config_from_dict(copy.deepcopy(raw_config))
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    for name in cfg.optim.freeze:
        for parameter in module_of(model, name).parameters():
            parameter.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = ReferenceOptimizer(cfg, params)
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    order = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                             seed=cfg.data.seed)
    losses, norms = [], []
    for _ in range(steps):
        (indices,) = order.step_indices()
        order.next_step()
        batch = collate([dataset[i] for i in indices])
        mask = batch[LOSS_MASK]
        loss = (model(**batch) * mask).sum() / mask.sum()
        losses.append(loss.item())
        norms.append(optimizer.step(list(torch.autograd.grad(loss, [p for _, p in params], allow_unused=True))))
    return ReferenceResult(losses, {name: t.detach().clone() for name, t in model.state_dict().items()}, norms)


def _head_dim(cfg: MimoConfig, name: str) -> int:
    """Head size of the built-in block that owns parameter ``name`` (``language.`` or
    ``modalities.<m>.encoders.<e>.``)."""
    parts = name.split(".")
    owner = cfg.model.language if parts[0] == "language" else cfg.model.modalities[parts[1]].encoders[parts[3]]
    return owner.hidden_size // owner.num_heads


def key_bias_part(name: str, tensor: torch.Tensor, cfg: MimoConfig | None = None) -> torch.Tensor | slice | None:
    """The entries of ``name`` that are a key bias (the middle ``K`` of every head's ``q k v`` triple in a
    head-major fused ``qkv.bias``, a whole ``k_proj.bias``).

    A bias shared by every key has a true gradient of exactly 0 (``softmax(q.(k + b)) = softmax(q.k)``): any two
    implementations get different rounding noise there (~1e-10), which AdamW scales up to ~lr/100 per step, and
    a separate ``k_proj.bias`` starting at 0 has no scale for a relative comparison.
    """
    if name.endswith(".qkv.bias"):
        if cfg is None:
            raise ValueError(f"{name}: the head size of a fused qkv bias comes from the run's config; pass cfg")
        head_dim = _head_dim(cfg, name)
        return torch.arange(tensor.shape[0]).view(-1, 3, head_dim)[:, 1].reshape(-1)
    if name.endswith(".self_attn.k_proj.bias"):
        return slice(None)
    return None


def settle_key_biases(
    weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], *, max_move: float, who: str,
    cfg: MimoConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Check that no key bias moved by more than ``max_move`` (noise, not a gradient), then put them back to
    their initial values so that ``assert_same_training`` compares everything else."""
    settled = dict(weights)
    for name, tensor in weights.items():
        part = key_bias_part(name, tensor, cfg)
        if part is None:
            continue
        moved = (tensor[part] - initial[name][part]).abs().max().item()
        assert moved <= max_move, f"{who}: key bias {name} moved by {moved:.2e} > {max_move:.0e}; its gradient is 0"
        settled[name] = tensor.clone()
        settled[name][part] = initial[name][part]
    return settled
