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


def assert_same_training(
    losses: list[float], weights: dict[str, torch.Tensor],
    ref_losses: list[float], ref_weights: dict[str, torch.Tensor], *, initial: dict[str, torch.Tensor],
    rtol: float = 1e-5,
) -> None:
    """Losses and every weight within ``rtol``; updates (weight - initial) within a looser norm-wise bound.

    Weights alone are a weak check when updates are tiny next to the weights, so the updates are compared too.
    """
    assert len(losses) == len(ref_losses)
    for step, (got, want) in enumerate(zip(losses, ref_losses), start=1):
        assert abs(got - want) <= rtol * abs(want), f"step {step}: loss {got} vs reference {want}"
    assert sorted(weights) == sorted(ref_weights), (
        f"names differ: extra {sorted(set(weights) - set(ref_weights))}, "
        f"missing {sorted(set(ref_weights) - set(weights))}"
    )
    for name, want in ref_weights.items():
        torch.testing.assert_close(weights[name], want, rtol=rtol, atol=1e-7, msg=lambda m: f"{name}: {m}")
        update, ref_update = weights[name] - initial[name], want - initial[name]
        scale = ref_update.norm().item()
        if scale > 0:
            error = (update - ref_update).norm().item()
            assert error <= 1e-3 * scale + 1e-7, f"{name}: update differs by {error / scale:.2e} (relative)"
        else:
            assert update.abs().max().item() == 0.0, f"{name}: should not move (frozen) but moved"
