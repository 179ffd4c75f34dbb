"""metrics.jsonl: one line per step; a resumed run replaces the lines of the steps it repeats."""

from __future__ import annotations

import json

from mimo.training.metrics import MetricsLog, StepMetrics


def _metrics(step: int) -> StepMetrics:
    return StepMetrics(step=step, loss=1.0 / step, grad_norm=0.5, lr=0.1, tokens=10, step_time_s=0.01)


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_run_keeps_earlier_lines_and_rewrites_the_repeated_steps(tmp_path):
    log = MetricsLog(tmp_path, total_steps=6, progress=False)
    for step in range(1, 6):
        log.log(_metrics(step))
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "lo')  # a line cut short by a crash
    resumed = MetricsLog(tmp_path, total_steps=6, start_step=3, progress=False)
    for step in range(4, 7):
        resumed.log(_metrics(step))
    resumed.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_starts_a_new_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    log = MetricsLog(tmp_path, total_steps=1, progress=False)
    log.log(_metrics(1))
    log.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1]
