"""mimo's single-process step against a plain PyTorch loop on the same model, batches and optimizer.

    .venv/bin/python benchmarks/overhead.py [--rounds 7] [--steps 10] [--quick]

Both arms train the same ``MimoModel`` from the same initial weights on the same pre-generated microbatches with
AdamW, gradient clipping and the global-token-count objective. The plain loop is what a user would write by
hand: forward, masked sum, backward per microbatch, divide, clip, step, LR schedule step. The arms alternate
round by round (the machine is noisy), and the table gives each arm's median ms/step over rounds, the spread
(min-max of the round medians) and the mimo/plain ratio, for the tiny recipe and for a model of 25M+ parameters.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch

from mimo.config import config_from_dict, load_config
from mimo.data import MicrobatchLoader, build_dataset
from mimo.distributed import DistributedContext
from mimo.model import MimoModel
from mimo.training.optim import lr_factor
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer

MEDIUM = {
    "language": {"vocab_size": 4096, "hidden_size": 512, "num_layers": 8, "num_heads": 8, "max_seq_len": 128},
    "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
        "kind": "vision", "image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 256, "num_layers": 2,
        "num_heads": 4}}}},
}


def recipes(quick: bool) -> dict[str, dict[str, Any]]:
    tiny = _as_raw(load_config("configs/tiny_vlm.yaml"))
    medium = copy.deepcopy(tiny)
    medium["model"] = MEDIUM
    medium["data"].update({"seq_length": 96})
    medium["train"].update({"global_batch_size": 8, "num_microbatches": 2})
    return {"tiny recipe": tiny} if quick else {"tiny recipe": tiny, "medium (25M+)": medium}


def _as_raw(cfg: Any) -> dict[str, Any]:
    import dataclasses

    raw = dataclasses.asdict(cfg)
    raw["train"].update({"progress": False})
    raw["checkpoint"].update({"at_end": False})
    return raw


def mimo_arm(raw: dict[str, Any], steps: int) -> float:
    cfg = config_from_dict(copy.deepcopy(raw))
    trainer = Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - start) / steps


def plain_arm(raw: dict[str, Any], steps: int) -> float:
    cfg = config_from_dict(copy.deepcopy(raw))
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.default.lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.optim.default.weight_decay)
    # The recipe's warmup + cosine schedule, as a user's loop would have it (mimo steps the same LambdaLR).
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=cfg.train.steps, schedule=cfg.optim.lr_schedule))
    loader = MicrobatchLoader(build_dataset(cfg.data, cfg.model), global_batch_size=cfg.train.global_batch_size,
                              num_microbatches=cfg.train.num_microbatches, seed=cfg.data.seed)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        batches = list(loader.next_step())
        tokens = sum(batch["loss_mask"].sum() for batch in batches)
        for batch in batches:
            per_token = model(**batch)
            (per_token * batch["loss_mask"]).sum().backward()
        for parameter in model.parameters():
            parameter.grad /= tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        schedule.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    parser.add_argument("--quick", action="store_true", help="tiny recipe only, 3 rounds of 5 steps")
    args = parser.parse_args()
    rounds, steps = (3, 5) if args.quick else (args.rounds, args.steps)
    torch.set_num_threads(torch.get_num_threads())
    print(f"{'model':<16} {'params':>8} {'mimo ms':>9} {'plain ms':>9} {'spread mimo':>13} {'spread plain':>13} "
          f"{'ratio':>6}")
    for name, raw in recipes(args.quick).items():
        params = sum(p.numel() for p in MimoModel(config_from_dict(copy.deepcopy(raw)).model).parameters())
        times: dict[str, list[float]] = {"mimo": [], "plain": []}
        for round_index in range(rounds):
            arms = [("mimo", mimo_arm), ("plain", plain_arm)]
            for arm, run in arms if round_index % 2 == 0 else reversed(arms):  # alternate which arm goes first
                times[arm].append(run(raw, steps))
        medians = {arm: statistics.median(values) for arm, values in times.items()}
        spread = {arm: f"{1e3 * min(v):.1f}-{1e3 * max(v):.1f}" for arm, v in times.items()}
        print(f"{name:<16} {params / 1e6:>7.1f}M {1e3 * medians['mimo']:>9.1f} {1e3 * medians['plain']:>9.1f} "
              f"{spread['mimo']:>13} {spread['plain']:>13} {medians['mimo'] / medians['plain']:>6.3f}")


if __name__ == "__main__":
    main()
