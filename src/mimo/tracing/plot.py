"""Draws one traced step as a PNG: what each rank measured, and below it the same action lists replayed with the
measured costs (predicted) and with free communication (ideal), on the same time axis.

Why three panels: measured against predicted is the runtime's overhead (launch skew, contention, copies the
costs do not capture); predicted against ideal is what communication costs; the ideal's own gaps are the bubble
the schedule leaves. Matplotlib's object API with the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mimo.pipeline.actions import Action, ActionKind
from mimo.pipeline.timed import TimedResult
from mimo.tracing.analysis import (
    Comparison,
    MeasuredPhase,
    action_spans,
    compare,
    phase_spans,
    plan_of,
    traced_steps,
)

__all__ = ["draw_timeline", "pick_step"]

_MODULE_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
_PHASE_COLORS = {"data": "tan", "grad-reduce": "mediumpurple", "optimizer": "dimgray", "validation": "teal",
                 "checkpoint": "goldenrod", "forward": "silver", "backward": "gray"}
_COMM, _WAIT = "0.35", "0.85"
_ROW = 0.8


def pick_step(trace: Mapping[str, Any], comparison: Comparison | None, step: int | None) -> int:
    """``step`` if traced; by default the complete step with the median pipeline time (a typical one)."""
    steps = comparison.steps if comparison is not None else traced_steps(trace)
    if not steps:
        raise ValueError("the trace holds no step")
    if step is not None:
        if step not in steps:
            raise ValueError(f"step {step} is not completely traced; traced steps: {steps}")
        return step
    if comparison is None:
        return steps[len(steps) // 2]
    ordered = sorted(comparison.measured, key=lambda m: m.pipeline_s)
    return ordered[(len(ordered) - 1) // 2].step


def draw_timeline(trace: Mapping[str, Any], out: str | Path, *, step: int | None = None) -> Path:
    """Write the PNG for ``step`` (see ``pick_step``) to ``out``; return its path."""
    comparison = compare(trace)
    step = pick_step(trace, comparison, step)
    plan = plan_of(trace)
    ranks = sorted({event["pid"] for event in trace["traceEvents"] if event.get("ph") == "X"})
    modules = list(plan.layouts) if plan is not None else []
    colors = {module: _MODULE_COLORS[i % len(_MODULE_COLORS)] for i, module in enumerate(modules)}
    panels = 3 if comparison is not None else 1
    figure = Figure(figsize=(14, 1.0 + panels * (0.55 * len(ranks) + 0.9)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    labels = {rank: f"rank {rank}\n{plan.stages.get(rank, '')}" if plan else f"rank {rank}" for rank in ranks}
    origin = _draw_measured(axes[0], trace, step, ranks, colors)
    if comparison is not None:
        measure = next(m for m in comparison.measured if m.step == step)
        idle = ", ".join(f"{rank}: {100 * measure.idle_fraction(rank):.0f} %" for rank in ranks)
        axes[0].set_title(f"measured, step {step}: pipeline {measure.pipeline_s * 1e3:.1f} ms; idle per rank {idle}",
                          loc="left", fontsize=10)
        for ax, result, what in ((axes[1], comparison.predicted, "predicted: one replay, mean costs, measured entries"),
                                 (axes[2], comparison.ideal, "ideal: measured compute, free communication")):
            _draw_replay(ax, result, colors)
            idle = ", ".join(f"{rank}: {100 * result.idle_fraction(rank):.0f} %" for rank in ranks)
            ax.set_title(f"{what}: pipeline {result.step_time_s * 1e3:.1f} ms; idle per rank {idle}", loc="left",
                         fontsize=10)
    else:
        axes[0].set_title(f"measured, step {step}", loc="left", fontsize=10)
    for ax in axes:
        ax.set_yticks([-rank for rank in ranks], [labels[rank] for rank in ranks], fontsize=8)
        ax.set_ylim(-ranks[-1] - 0.6, -ranks[0] + 0.6)
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
    axes[-1].set_xlabel(f"ms from the first action of step {step} ({trace['mimo'].get('clock', '')})", fontsize=8)
    axes[0].set_xlim(left=min(0.0, origin))
    figure.legend(handles=_legend(colors), loc="outside lower center", ncol=8, fontsize=8, frameon=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def _draw_measured(ax: Axes, trace: Mapping[str, Any], step: int, ranks: Sequence[int],
                   colors: Mapping[str, str]) -> float:
    """Actions (and phases) of ``step``; x in ms from its first action. Returns the earliest x drawn."""
    actions = [span for span in action_spans(trace) if span.step == step]
    phases = [phase for phase in phase_spans(trace) if phase.step == step and phase.name != "step"]
    zero = min((span.start_s for span in actions), default=min((p.start_s for p in phases), default=0.0))
    plan = plan_of(trace)
    sent: dict[tuple[int, Action], float] = {(span.rank, span.action): span.end_s for span in actions
                                               if span.action.kind.is_send}
    sends_of = plan.sends_of() if plan is not None else {}
    for span in actions:
        wait = 0.0
        if span.action.kind.is_recv:
            ends = [sent.get((s.rank, s.action), span.start_s) for s in sends_of.get((span.rank, span.action), [])]
            wait = min(max(max(ends, default=span.start_s) - span.start_s, 0.0), span.duration_s)
        _box(ax, span.rank, span.action, (span.start_s - zero) * 1e3, span.duration_s * 1e3, wait * 1e3, colors)
    for phase in phases:
        _phase(ax, phase, zero)
    return min([(p.start_s - zero) * 1e3 for p in phases] + [0.0])


def _draw_replay(ax: Axes, result: TimedResult, colors: Mapping[str, str]) -> None:
    for timed in result.actions:
        _box(ax, timed.rank, timed.action, timed.start_s * 1e3, (timed.end_s - timed.start_s) * 1e3,
             timed.wait_s * 1e3, colors)


def _box(ax: Axes, rank: int, action: Action, x: float, width: float, wait: float,
         colors: Mapping[str, str]) -> None:
    y = -rank
    if action.kind.is_compute:
        base = to_rgb(colors.get(action.module, "tab:gray"))
        forward = action.kind is ActionKind.F
        face = base if forward else tuple(0.6 * c for c in base)
        ax.broken_barh([(x, width)], (y - _ROW / 2, _ROW), facecolors=[face], edgecolors="white", linewidth=0.5,
                       hatch=None if forward else "///")
        ax.text(x + width / 2, y, str(action.microbatch), ha="center", va="center", fontsize=7, color="white",
                fontweight="bold", clip_on=True)
        return
    thin = _ROW / 4
    if wait > 0:
        ax.broken_barh([(x, wait)], (y - thin / 2, thin), facecolors=_WAIT)
    if width - wait > 0:
        ax.broken_barh([(x + wait, width - wait)], (y - thin / 2, thin), facecolors=_COMM)


def _phase(ax: Axes, phase: MeasuredPhase, zero: float) -> None:
    """Phases as a thin strip under the row (loading data sits under its forward); without a pipeline
    (colocated), the forward and backward of the whole model as full boxes in the row itself."""
    x, width = (phase.start_s - zero) * 1e3, (phase.end_s - phase.start_s) * 1e3
    if phase.name in ("forward", "backward"):
        forward = phase.name == "forward"
        ax.broken_barh([(x, width)], (-phase.rank - _ROW / 2, _ROW), facecolors=_PHASE_COLORS[phase.name],
                       edgecolors="white", linewidth=0.5, hatch=None if forward else "///")
        return
    y = -phase.rank - _ROW / 2 - 0.06
    ax.broken_barh([(x, width)], (y, 0.1), facecolors=_PHASE_COLORS.get(phase.name, "black"))


def _legend(colors: Mapping[str, str]) -> list[Patch]:
    handles = [Patch(facecolor=color, label=f"{module} forward") for module, color in colors.items()]
    handles.append(Patch(facecolor="0.4", hatch="///", edgecolor="white", label="backward (darker, hatched)"))
    handles.append(Patch(facecolor=_COMM, label="send / receive transfer"))
    handles.append(Patch(facecolor=_WAIT, label="waiting in a receive"))
    handles += [Patch(facecolor=_PHASE_COLORS[name], label=name) for name in ("data", "grad-reduce", "optimizer")]
    return handles

