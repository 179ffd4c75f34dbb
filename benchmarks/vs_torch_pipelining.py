"""Step time of mimo's pipeline runner against ``torch.distributed.pipelining``'s ``Schedule1F1B``.

    .venv/bin/python benchmarks/vs_torch_pipelining.py            # tiny + medium, 2 and 4 ranks (a few minutes)
    .venv/bin/python benchmarks/vs_torch_pipelining.py --quick    # smoke run (well under a minute)
    .venv/bin/python benchmarks/vs_torch_pipelining.py --ranks 2 --sizes medium --reps 15

Both arms run the *same* stages (slices of ``mimo.model.language.LanguageModel`` built from one seeded model, so
their weights are identical), the same microbatches and the same loss (mean token cross-entropy per microbatch,
gradients divided by the number of microbatches), on gloo processes with one torch thread each. Each repetition
runs one training step (forward + backward, gradients zeroed, no optimizer) of each arm, alternating which goes
first, between barriers; the step time is rank 0's wall time from one barrier to the next. The table shows the
median, the spread (min-max) and the mimo/torch ratio of the medians, with the median of the per-repetition
paired ratios next to it (less sensitive to load drifting during the run), and the ratio of the CPU time all
ranks spent in a step (process time, gloo's threads included: what each arm costs, whatever else runs on the
machine). The machine load is printed: on a shared 2-core machine ratios are the figures to trust, absolute
times are not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimo.comm.multimodule import MultiModulePipelineCommunicator  # noqa: E402
from mimo.comm.routing import RoutingPlan  # noqa: E402
from mimo.model.configs import LANGUAGE_MODULE, LanguageModelConfig  # noqa: E402
from mimo.model.language import LanguageModel  # noqa: E402
from mimo.parallel.layout import ModuleLayout  # noqa: E402
from mimo.parallel.topology import Topology  # noqa: E402
from mimo.pipeline.runner import StageRunner  # noqa: E402
from mimo.pipeline.schedules import build_train_schedule  # noqa: E402


@dataclass(frozen=True)
class Size:
    """One model and batch shape."""

    name: str
    hidden: int
    layers: int
    heads: int
    seq: int
    micro_batch: int
    microbatches: int
    vocab: int = 256


SIZES = {
    "tiny": Size("tiny", hidden=64, layers=4, heads=4, seq=32, micro_batch=4, microbatches=8),
    "medium": Size("medium", hidden=256, layers=4, heads=8, seq=64, micro_batch=4, microbatches=8),
}


# model ---------------------------------------------------------------------------------------------------
def _config(size: Size) -> LanguageModelConfig:
    return LanguageModelConfig(vocab_size=size.vocab, hidden_size=size.hidden, num_layers=size.layers,
                               num_heads=size.heads, max_seq_len=size.seq)


def _slice(size: Size, stage: int, num_stages: int) -> LanguageModel:
    """Stage ``stage`` of one seeded model: every rank builds the whole model and keeps its own layers."""
    config = _config(size)
    torch.manual_seed(1234)
    full = LanguageModel(config)
    per = [size.layers // num_stages + (i < size.layers % num_stages) for i in range(num_stages)]
    start = sum(per[:stage])
    part = LanguageModel(config, layers=range(start, start + per[stage]), has_embedding=stage == 0,
                         has_head=stage == num_stages - 1)
    part.load_state_dict({k: v for k, v in full.state_dict().items() if k in part.state_dict()})
    return part


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The one loss both arms use: mean token cross-entropy of a microbatch."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def _positions(input_ids: Tensor) -> Tensor:
    return torch.arange(input_ids.shape[1]).expand_as(input_ids)


class TorchStage(nn.Module):
    """A language-model slice with tensor in, tensor out, as ``PipelineStage`` wants."""

    def __init__(self, part: LanguageModel) -> None:
        super().__init__()
        self.part = part

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.part.embed(x, _positions(x)) if self.part.has_embedding else x
        hidden = self.part._run_layers(hidden, None)
        return self.part.head_logits(hidden) if self.part.has_head else hidden


class MimoStage(nn.Module):
    """The same slice as a mimo stage: ``{module: tensor}`` in and out, the loss on the last stage."""

    def __init__(self, part: LanguageModel) -> None:
        super().__init__()
        self.part = part
        self.is_loss_stage = part.has_head
        self.needs_data = part.has_embedding or part.has_head

    def forward(self, *, inputs: dict[str, Tensor], input_ids: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        if self.part.has_embedding:
            assert input_ids is not None
            hidden = self.part.embed(input_ids, _positions(input_ids))
        else:
            hidden = inputs[LANGUAGE_MODULE]
        hidden = self.part._run_layers(hidden, None)
        if self.part.has_head:
            assert labels is not None
            return _loss(self.part.head_logits(hidden), labels)
        return {LANGUAGE_MODULE: hidden}


# arms ----------------------------------------------------------------------------------------------------
def _batch(size: Size) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(99)
    tokens = torch.randint(0, size.vocab, (size.micro_batch * size.microbatches, size.seq + 1), generator=generator)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class MimoArm:
    def __init__(self, size: Size, rank: int, world: int, groups: tuple[Any, Any]) -> None:
        self.size = size
        self.stage = MimoStage(_slice(size, rank, world))
        layouts = {LANGUAGE_MODULE: ModuleLayout(dp=1, pp=world)}
        topology = Topology({LANGUAGE_MODULE: ()})
        routing = RoutingPlan(layouts, topology, size.micro_batch)
        communicator = MultiModulePipelineCommunicator(
            rank=rank, module=LANGUAGE_MODULE, stage=rank, routing=routing, backward_modules={LANGUAGE_MODULE},
            device=torch.device("cpu"), activation_group=groups[0], gradient_group=groups[1],
        )
        self.runner = StageRunner(stage=self.stage, communicator=communicator, forward_step=self._forward_step,
                                  timers=lambda name: contextlib.nullcontext())
        self.actions = build_train_schedule(layouts, topology, size.microbatches)[rank]
        input_ids, labels = _batch(size)
        self.microbatches = [
            {"input_ids": i, "labels": l}
            for i, l in zip(input_ids.split(size.micro_batch), labels.split(size.micro_batch))
        ]

    def _forward_step(self, data: Iterator[dict[str, Tensor]] | None, model: Any) -> tuple[Any, Any]:
        batch = next(data) if data is not None and model.needs_data else {}
        output = model(**batch)
        if not model.is_loss_stage:
            return output, None
        count = self.size.microbatches

        def loss_func(loss: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            report = torch.stack([loss.detach(), torch.ones(())])
            return loss / count, torch.tensor(1), {"lm loss": report}

        return output, loss_func

    def step(self) -> float:
        self.stage.zero_grad(set_to_none=True)
        losses = self.runner.run(self.actions, iter(self.microbatches))
        return float(losses.total(torch.device("cpu"))[0]) / self.size.microbatches

    def grads(self) -> dict[str, Tensor]:
        return {k: p.grad for k, p in self.stage.part.named_parameters()}


class TorchArm:
    def __init__(self, size: Size, rank: int, world: int) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B

        self.size, self.rank, self.world = size, rank, world
        self.module = TorchStage(_slice(size, rank, world))
        stage = PipelineStage(self.module, rank, world, torch.device("cpu"))
        self.schedule = Schedule1F1B(stage, size.microbatches, loss_fn=_loss)
        self.input_ids, self.labels = _batch(size)

    def step(self) -> float:
        self.module.zero_grad(set_to_none=True)
        losses: list[Tensor] = []
        if self.rank == 0:
            self.schedule.step(self.input_ids)
        elif self.rank == self.world - 1:
            self.schedule.step(target=self.labels, losses=losses)
        else:
            self.schedule.step()
        return float(torch.stack(losses).detach().mean()) if losses else 0.0

    def grads(self) -> dict[str, Tensor]:
        return {k: p.grad for k, p in self.module.part.named_parameters()}


# driver --------------------------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, sizes: list[str], reps: int, warmup: int, out: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    groups = (dist.new_group(list(range(world))), dist.new_group(list(range(world))))
    for name in sizes:
        size = SIZES[name]
        arms = {"mimo": MimoArm(size, rank, world, groups), "torch": TorchArm(size, rank, world)}
        times: dict[str, list[float]] = {"mimo": [], "torch": []}
        cpu = {"mimo": 0.0, "torch": 0.0}
        losses: dict[str, float] = {}
        for rep in range(warmup + reps):
            order = ["mimo", "torch"] if rep % 2 == 0 else ["torch", "mimo"]
            for arm in order:
                dist.barrier()
                start, start_cpu = time.perf_counter(), time.process_time()
                losses[arm] = arms[arm].step()
                dist.barrier()
                if rep >= warmup:
                    times[arm].append(time.perf_counter() - start)
                    cpu[arm] += time.process_time() - start_cpu
        # The same math: the two arms' gradients of the last step must agree.
        grad_error = max(
            ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
            for a, b in zip(arms["mimo"].grads().values(), arms["torch"].grads().values())
        )
        errors = torch.tensor([grad_error])
        dist.all_reduce(errors, op=dist.ReduceOp.MAX)
        report = torch.tensor([losses["mimo"], losses["torch"], cpu["mimo"], cpu["torch"]], dtype=torch.float64)
        dist.all_reduce(report)  # losses: only the last rank holds one; CPU time: summed over ranks
        if rank == 0:
            values = report.tolist()
            out.put((name, world, times, values[:2], float(errors), values[2] / values[3]))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _row(name: str, world: int, times: dict[str, list[float]], losses: list[float], grad_error: float,
         cpu_ratio: float) -> str:
    mimo, torch_ = times["mimo"], times["torch"]
    med_m, med_t = statistics.median(mimo), statistics.median(torch_)
    paired = statistics.median(m / t for m, t in zip(mimo, torch_))
    return (f"{name:<7} {world:>5} {1e3 * med_m:>9.1f} {1e3 * min(mimo):>7.1f}-{1e3 * max(mimo):<7.1f} "
            f"{1e3 * med_t:>9.1f} {1e3 * min(torch_):>7.1f}-{1e3 * max(torch_):<7.1f} {med_m / med_t:>6.3f} "
            f"{paired:>7.3f} {cpu_ratio:>6.3f}   {losses[0]:.5f}/{losses[1]:.5f} {grad_error:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--reps", type=int, default=None, help="timed steps per arm (default 12, 4 with --quick)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    parser.add_argument("--quick", action="store_true", help="fast smoke run: fewer repetitions")
    args = parser.parse_args()
    reps = args.reps if args.reps is not None else (4 if args.quick else 12)
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}; {reps} timed steps per arm")
    for name in args.sizes:
        s = SIZES[name]
        print(f"  {name}: hidden {s.hidden}, {s.layers} layers, seq {s.seq}, micro batch {s.micro_batch}, "
              f"{s.microbatches} microbatches")
    print(f"{'model':<7} {'ranks':>5} {'mimo ms':>9} {'min-max':>15} {'torch ms':>9} {'min-max':>15} "
          f"{'ratio':>6} {'paired':>7} {'cpu':>6}   loss mimo/torch, grad diff")
    context = mp.get_context("spawn")
    for world in args.ranks:
        out = context.Queue()
        port = _free_port()
        processes = [context.Process(target=_rank_main, args=(r, world, port, args.sizes, reps, args.warmup, out))
                     for r in range(world)]
        for process in processes:
            process.start()
        for _ in args.sizes:
            print(_row(*out.get(timeout=1800)), flush=True)
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"a rank exited with {process.exitcode}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
