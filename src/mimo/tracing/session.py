"""The trainer's side of ``train.trace``: make the recorder and its timers, mark steps, and at the end write this
rank's part, merge every part on the logging rank and return the measured-vs-predicted comparison.

Why a class of its own: the trainer needs four calls and no knowledge of files, clocks or the analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist

from mimo.config import MimoConfig
from mimo.pipeline.actions import Action, format_actions
from mimo.training.run_plan import RunPlan
from mimo.tracing.analysis import compare
from mimo.tracing.files import merge_parts, part_path, trace_path, write_json
from mimo.tracing.recorder import TraceRecorder
from mimo.tracing.timers import TracedTimers

__all__ = ["RunTrace"]

# Timers phases that get a span. With a pipeline, forward/backward/comm-wait happen inside actions, which are
# traced themselves; without one (colocated) forward and backward are the only per-microbatch spans.
_PHASES = frozenset({"data", "grad-reduce", "optimizer", "validation", "checkpoint"})
_FUSED_PHASES = _PHASES | {"forward", "backward"}


class RunTrace:
    def __init__(self, cfg: MimoConfig, plan: RunPlan, *, rank: int, synchronize: Callable[[], None]) -> None:
        self.rank, self.run_dir = rank, Path(cfg.run_dir)
        self.recorder = TraceRecorder(rank, cfg.train.trace_window, synchronize=synchronize,
                                      phases=_FUSED_PHASES if plan.is_fused else _PHASES)
        self.plan = {
            "layouts": {name: {"dp": l.dp, "pp": l.pp, "tp": l.tp, "rank_offset": l.rank_offset,
                                  "dp_shard": l.dp_shard}
                        for name, l in plan.layouts.items()},
            "topology": {module: list(plan.topology.successors(module)) for module in plan.topology.modules},
            "micro_batch_size": cfg.train.micro_batch_size,
        }
        self._part: dict[str, Any] | None = None

    def timers(self, synchronize: Callable[[], None]) -> TracedTimers:
        """The run's timers, also recording each phase."""
        return TracedTimers(synchronize=synchronize, recorder=self.recorder)

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Everything until the next ``step`` call belongs to ``step``; the block itself is its ``step`` span."""
        self.recorder.begin_step(step)
        with self.recorder.step_span():
            yield

    def write_part(self, actions: Sequence[Action] | None, stage: str) -> Path:
        """This rank's part, written on its own (also after a failure, for ``mimo timeline``)."""
        self._part = self.recorder.part(actions=format_actions(actions or ()), stage=stage, plan=self.plan)
        return write_json(part_path(self.run_dir, self.rank), self._part)

    def finish(self, *, logging_rank: int) -> str | None:
        """Collective: gather every part on ``logging_rank``, which writes ``trace.json`` and returns the report."""
        assert self._part is not None, "write_part first"
        parts: list[Any] | None = [self._part]
        if dist.is_initialized():
            parts = [None] * dist.get_world_size() if self.rank == logging_rank else None
            dist.gather_object(self._part, parts, dst=logging_rank)
        if self.rank != logging_rank or parts is None:
            return None
        trace = merge_parts(parts)
        path = write_json(trace_path(self.run_dir), trace)
        comparison = compare(trace)
        if comparison is None:
            return f"trace: {path} (no complete pipeline step to compare with the schedule)"
        return f"{comparison.format()}\n  trace: {path} (mimo timeline {self.run_dir} draws it)"
