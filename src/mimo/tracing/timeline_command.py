"""``mimo timeline RUN_DIR [--out PNG] [--step N]``: merge the trace if the run did not, print the comparison
with the schedule's prediction, and draw the PNG."""

from __future__ import annotations

from pathlib import Path

from mimo.tracing.analysis import compare
from mimo.tracing.files import load_trace, trace_path
from mimo.tracing.plot import draw_timeline

__all__ = ["timeline"]


def timeline(run_dir: str | Path, *, out: str | Path | None = None, step: int | None = None) -> int:
    """Exit status 0; a missing or foreign trace, or an untraced step, is a ``ValueError`` (exit code 2)."""
    trace = load_trace(run_dir)
    comparison = compare(trace)
    if comparison is not None:
        print(comparison.format())
    written = draw_timeline(trace, out or Path(run_dir) / "timeline.png", step=step)
    print(f"trace: {trace_path(run_dir)}")
    print(f"timeline: {written}")
    return 0
