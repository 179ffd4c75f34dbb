"""The trace on disk: each rank's part (``<run_dir>/trace/rank<N>.json``) and the merged Chrome/Perfetto trace
(``<run_dir>/trace.json``: ``traceEvents`` of ``ph: "X"`` spans, ``pid`` = rank, ``tid`` = lane, times in µs).

Why both: a rank writes its part on its own (even when the run fails later, or when machines share no disk);
the merge needs every part and is done once, by the logging rank over the process group or by ``mimo timeline``
from the files. The merged file also carries, under ``"mimo"``, what the analysis needs to replay the schedule:
every rank's action list, the layouts, the topology and the micro batch size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mimo.tracing.recorder import PART_FORMAT, Lane

__all__ = ["TRACE_FORMAT", "load_trace", "merge_parts", "part_path", "read_parts", "trace_path", "write_json"]

TRACE_FORMAT = "mimo-trace/1"
_LANE_NAMES = {Lane.STEP: "step", Lane.ACTIONS: "actions", Lane.DATA: "data"}


def trace_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "trace.json"


def part_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / "trace" / f"rank{rank}.json"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write through a temporary file, so a reader never sees half a trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    temporary.replace(path)
    return path


def read_parts(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every rank's part found under ``<run_dir>/trace``, by rank."""
    parts = []
    for path in sorted((Path(run_dir) / "trace").glob("rank*.json")):
        part = json.loads(path.read_text())
        if part.get("format") != PART_FORMAT:
            raise ValueError(f"{path} is not a mimo trace part (format {part.get('format')!r})")
        parts.append(part)
    return sorted(parts, key=lambda part: part["rank"])


def merge_parts(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One Chrome trace from the ranks' parts, all on one clock (see ``recorder`` for how clocks are aligned)."""
    if not parts:
        raise ValueError("no trace parts to merge")
    # Same host and boot (containers of one machine share it): one monotonic clock. Else the wall clock.
    one_clock = len({(part["clock"]["host"], part["clock"]["boot_id"]) for part in parts}) == 1
    shift = {part["rank"]: 0 if one_clock else part["clock"]["wall_ns"] - part["clock"]["monotonic_ns"]
             for part in parts}
    starts = [span[2] + shift[part["rank"]] for part in parts for span in part["spans"]]
    origin = min(starts, default=0)
    events: list[dict[str, Any]] = []
    for part in parts:
        rank = part["rank"]
        events.append({"ph": "M", "name": "process_name", "pid": rank, "ts": 0,
                       "args": {"name": f"rank {rank}" + (f" ({part['stage']})" if part.get("stage") else "")}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "ts": 0, "args": {"sort_index": rank}})
        for lane, name in _LANE_NAMES.items():
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": int(lane), "ts": 0,
                           "args": {"name": name}})
        for name, lane, start, end, args in part["spans"]:
            events.append({
                "ph": "X", "name": name, "cat": args.get("kind", "phase"), "pid": rank, "tid": lane,
                "ts": (start + shift[rank] - origin) / 1e3, "dur": (end - start) / 1e3, "args": args,
            })
    hosts = sorted({part["clock"]["host"] for part in parts})
    clock = (f"monotonic clock of {hosts[0]} (shared by every rank)" if one_clock
             else f"wall clock of hosts {hosts} (aligned only as well as their NTP)")
    first = parts[0]
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "mimo": {
            "format": TRACE_FORMAT,
            "clock": clock,
            "window": first["window"],
            "plan": next((part["plan"] for part in parts if part.get("plan")), None),
            "schedule": {str(part["rank"]): part.get("actions", "") for part in parts},
            "stages": {str(part["rank"]): part.get("stage", "") for part in parts},
        },
    }


def load_trace(run_dir: str | Path) -> dict[str, Any]:
    """``<run_dir>/trace.json``, merged from the ranks' parts (and written) if the run did not merge it."""
    path = trace_path(run_dir)
    if path.is_file():
        trace = json.loads(path.read_text())
        if trace.get("mimo", {}).get("format") != TRACE_FORMAT:
            raise ValueError(f"{path} is not a trace written by mimo (no 'mimo' section of format {TRACE_FORMAT})")
        return trace
    parts = read_parts(run_dir)
    if not parts:
        raise ValueError(f"no trace in {str(run_dir)!r}: run with --set train.trace=true (then {path} is written)")
    trace = merge_parts(parts)
    write_json(path, trace)
    return trace
