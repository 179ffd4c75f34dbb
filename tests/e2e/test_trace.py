"""``train.trace`` on the heterogeneous recipe (images on rank 0, language pp=2 on ranks 1-2), 3 gloo ranks: the
trace holds every action of every rank's list for every traced step, in list order, on one clock, every send
before its receive completes; the run prints measured against predicted; ``mimo timeline`` draws a PNG, also
from the ranks' parts alone."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mimo.config import load_config
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.timed import matching_sends
from mimo.training.run_plan import plan_run
from tests.e2e.launch import ROOT, run_to_end

pytestmark = pytest.mark.e2e

CONFIG = "configs/tiny_vlm_hetero.yaml"
STEPS = 4
# Chrome timestamps are µs with ns decimals: allow one rounding step between spans that touch.
EPS_US = 2e-3


def _overrides(run_dir: Path) -> list[str]:
    return [f"run_dir={run_dir}", f"train.steps={STEPS}", "train.trace=true", "train.progress=false",
            "checkpoint.at_end=false"]


def _expected_schedule(run_dir: Path):
    cfg = load_config(ROOT / CONFIG, _overrides(run_dir))
    plan = plan_run(cfg, world_size=3)
    schedule = build_train_schedule(plan.layouts, plan.topology, cfg.train.num_microbatches,
                                    backward_modules=plan.backward_modules)
    return cfg, plan, schedule


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_trace_matches_the_schedule_and_the_timeline_is_drawn(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--config", CONFIG]
    for override in _overrides(run_dir):
        args += ["--set", override]
    ranks = run_to_end(args, world_size=3, log_dir=tmp_path / "logs", name="trace", timeout_s=150)
    cfg, plan, schedule = _expected_schedule(run_dir)
    first, last = cfg.train.trace_window
    assert (first, last) == (2, 4)

    trace = json.loads((run_dir / "trace.json").read_text())
    spans = [event for event in trace["traceEvents"] if event["ph"] == "X"]
    assert {event["pid"] for event in spans} == {0, 1, 2}
    actions: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for event in spans:
        if "module" in event["args"]:
            assert event["tid"] == 1 and set(event["args"]) >= {"module", "stage", "microbatch", "step"}
            actions[(event["pid"], event["args"]["step"])].append(event)
    assert sorted({step for _, step in actions}) == list(range(first, last + 1))

    by_action: dict[tuple[int, int, str], dict] = {}
    for rank, expected in schedule.items():
        for step in range(first, last + 1):
            recorded = sorted(actions[(rank, step)], key=lambda event: event["ts"])
            # Every action of the list, once, in the order of the list, on non-decreasing starts.
            assert [event["name"] for event in recorded] == [str(action) for action in expected], (rank, step)
            assert [event["args"]["index"] for event in recorded] == list(range(len(expected)))
            for before, after in zip(recorded, recorded[1:]):
                assert before["ts"] <= after["ts"] and before["ts"] + before["dur"] <= after["ts"] + EPS_US
            by_action.update({(rank, step, event["name"]): event for event in recorded})

    # Every send starts before the receive that takes its message completes (one clock for all ranks).
    sends_of = matching_sends(schedule, plan.layouts, plan.topology, cfg.train.micro_batch_size)
    assert sends_of
    for step in range(first, last + 1):
        for (rank, receive), sends in sends_of.items():
            received = by_action[(rank, step, str(receive))]
            for send in sends:
                sent = by_action[(send.rank, step, str(send.action))]
                assert sent["ts"] <= received["ts"] + received["dur"] + EPS_US, (step, str(send.action), str(receive))

    phases = {(event["pid"], event["name"], event["args"]["step"]) for event in spans if "module" not in event["args"]}
    for rank in range(3):
        for step in range(first, last + 1):
            assert {(rank, "step", step), (rank, "grad-reduce", step), (rank, "optimizer", step)} <= phases
    assert any(name == "data" for _, name, _ in phases)
    assert sorted(p.name for p in (run_dir / "trace").iterdir()) == ["rank0.json", "rank1.json", "rank2.json"]

    # The logging rank (the last language stage) prints measured against predicted.
    out = ranks.stdout(plan.loss_rank)
    assert f"trace: steps {first}..{last}" in out, out
    assert "measured  predicted" in out and "shared by every rank" in out
    for rank in range(3):
        assert f"idle rank {rank}" in out

    # mimo timeline draws it; without trace.json it merges the ranks' parts first.
    (run_dir / "trace.json").unlink()
    png = tmp_path / "timeline.png"
    result = subprocess.run([sys.executable, "-m", "mimo", "timeline", str(run_dir), "--out", str(png)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "trace.json").is_file() and f"timeline: {png}" in result.stdout
    assert "idle rank 1" in result.stdout
    width, height = _png_size(png)
    assert width >= 800 and height >= 400 and png.stat().st_size > 20_000

    missing = subprocess.run([sys.executable, "-m", "mimo", "timeline", str(tmp_path / "nothing")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "train.trace=true" in missing.stderr
