"""Train a config on N gloo processes (any layout) and bring back the losses and the consolidated weights."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.export import load_safetensors
from mimo.export import export_consolidated
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.distributed.launcher import run_ranks
from tests.parity.reference import reference_run, reference_training, settle_key_biases


def _train_rank(rank: int, world_size: int, raw_config: dict[str, Any], steps: int, out: str) -> list[float]:
    cfg = config_from_dict(copy.deepcopy(raw_config))
    plan = plan_run(cfg, world_size)
    trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")), plan)
    losses = [trainer.train_step().loss for _ in range(steps)]
    export_consolidated(trainer, out)
    dist.barrier()
    return losses


def distributed_run(
    raw_config: dict[str, Any], steps: int, *, world_size: int, tmp_path: Path, timeout_s: float = 120.0
) -> tuple[list[list[float]], dict[str, torch.Tensor]]:
    """Per-rank loss histories (every rank knows the loss) and the final consolidated weights."""
    out = tmp_path / f"weights-{world_size}.safetensors"
    losses = run_ranks(world_size, _train_rank, raw_config, steps, str(out), tmp_path=tmp_path, timeout_s=timeout_s)
    return losses, load_safetensors(out)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Norm-wise relative error ``||got - want|| / ||want||`` (0 when both are zero)."""
    scale = want.double().norm().item()
    error = (got.double() - want.double()).norm().item()
    return error / scale if scale > 0 else error


def assert_same_training(
    losses: list[float], weights: dict[str, torch.Tensor],
    ref_losses: list[float], ref_weights: dict[str, torch.Tensor], *, initial: dict[str, torch.Tensor],
    rtol: float = 1e-5, update_rtol: float = 1e-4,
) -> None:
    """Every loss and every weight tensor within ``rtol`` of the reference (norm-wise, per tensor).

    Weights alone are a weak check when updates are small next to the weights, so each tensor's update
    (final - initial) must also match within ``update_rtol``; a frozen tensor must not move at all.
    """
    assert len(losses) == len(ref_losses)
    for step, (got, want) in enumerate(zip(losses, ref_losses), start=1):
        assert abs(got - want) <= rtol * abs(want), f"step {step}: loss {got} vs reference {want}"
    assert sorted(weights) == sorted(ref_weights), (
        f"names differ: extra {sorted(set(weights) - set(ref_weights))}, "
        f"missing {sorted(set(ref_weights) - set(weights))}"
    )
    for name, want in ref_weights.items():
        error = relative_error(weights[name], want)
        assert error <= rtol, f"{name}: weights differ by {error:.2e} (relative)"
        ref_update = want - initial[name]
        if ref_update.abs().max().item() == 0:
            assert torch.equal(weights[name], initial[name]), f"{name}: frozen in the reference but moved"
            continue
        error = relative_error(weights[name] - initial[name], ref_update)
        assert error <= update_rtol, f"{name}: updates differ by {error:.2e} (relative)"


def assert_run_matches_reference(raw: dict[str, Any], steps: int, *, world_size: int, tmp_path: Path,
                                 initial: dict[str, torch.Tensor]) -> None:
    """Train ``raw`` over ``world_size`` ranks and in one process (SGD): every rank's loss equal, and the losses
    and weights those of the reference (``assert_same_training``)."""
    ref_losses, ref_weights = reference_run(raw, steps)
    losses, weights = distributed_run(raw, steps, world_size=world_size, tmp_path=tmp_path)
    assert all(rank_losses == losses[0] for rank_losses in losses), f"ranks disagree on the loss: {losses}"
    assert_same_training(losses[0], weights, ref_losses, ref_weights, initial=initial)


def assert_adamw_run_matches(raw: dict[str, Any], steps: int, *, world_size: int, tmp_path: Path,
                             initial: dict[str, torch.Tensor], max_lr: float) -> None:
    """Train ``raw`` over ``world_size`` ranks and in one process with AdamW: every rank's loss equal, each step's
    loss within 1e-5 of the reference, every weight within 1e-4 once the key biases (whose gradient is rounding
    noise that AdamW normalises into full steps) are set back where the gradient does not move them."""
    ref = reference_training(raw, steps)
    losses, weights = distributed_run(raw, steps, world_size=world_size, tmp_path=tmp_path)
    assert all(rank_losses == losses[0] for rank_losses in losses), f"ranks disagree on the loss: {losses}"
    for step, (got, want) in enumerate(zip(losses[0], ref.losses), start=1):
        assert abs(got - want) <= 1e-5 * abs(want), f"step {step}: loss {got} vs reference {want}"
    max_move = 0.05 * max_lr * steps  # a real gradient moves a weight by ~lr per step; noise by ~lr / 100
    cfg = config_from_dict(raw)
    weights = settle_key_biases(weights, initial, max_move=max_move, who="mimo", cfg=cfg)
    ref_weights = settle_key_biases(ref.weights, initial, max_move=max_move, who="reference", cfg=cfg)
    assert_same_training(losses[0], weights, ref.losses, ref_weights, initial=initial, rtol=1e-4)
