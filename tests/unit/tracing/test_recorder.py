"""The recorder records only inside its window, numbers actions per step, and filters phases; the traced timers
still time every phase."""

from __future__ import annotations

from mimo.pipeline.actions import parse_action
from mimo.tracing.recorder import Lane, TraceRecorder
from mimo.tracing.timers import TracedTimers


def test_nothing_is_recorded_outside_the_window() -> None:
    recorder = TraceRecorder(0, (2, 3), phases={"data"})
    recorder.begin_step(1)
    with recorder.step_span(), recorder.action(parse_action("language.0F0")), recorder.phase("data"):
        pass
    assert recorder.spans == []


def test_actions_are_numbered_per_step_and_phases_filtered() -> None:
    recorder = TraceRecorder(3, (2, 3), phases={"data", "optimizer"})
    for step in (2, 3, 4):
        recorder.begin_step(step)
        with recorder.step_span():
            with recorder.action(parse_action("language.1RECV_F0")):
                pass
            with recorder.action(parse_action("language.1F0")), recorder.phase("data"):
                pass
            with recorder.phase("forward"):  # not a traced phase
                pass
    actions = [span for span in recorder.spans if span.lane == Lane.ACTIONS]
    assert [(s.name, s.args["step"], s.args["index"]) for s in actions] == [
        ("language.1RECV_F0", 2, 0), ("language.1F0", 2, 1), ("language.1RECV_F0", 3, 0), ("language.1F0", 3, 1)]
    assert actions[1].args == {"module": "language", "stage": 1, "kind": "F", "microbatch": 0, "step": 2, "index": 1}
    data = [span for span in recorder.spans if span.name == "data"]
    assert [span.lane for span in data] == [Lane.DATA, Lane.DATA]
    assert all(span.start_ns <= span.end_ns for span in recorder.spans)
    steps = [span for span in recorder.spans if span.name == "step"]
    assert len(steps) == 2 and all(s.start_ns <= a.start_ns for s, a in zip(steps, actions[::2]))
    part = recorder.part(actions="language.1RECV_F0 language.1F0")
    assert part["rank"] == 3 and part["window"] == [2, 3] and len(part["spans"]) == len(recorder.spans)
    assert {"monotonic_ns", "wall_ns", "host", "boot_id"} <= set(part["clock"])


def test_traced_timers_time_and_record_phases() -> None:
    recorder = TraceRecorder(0, (1, 1), phases={"optimizer"})
    timers = TracedTimers(recorder=recorder)
    recorder.begin_step(1)
    with timers("optimizer"):
        pass
    with timers("backward"):
        pass
    assert set(timers.totals()) == {"optimizer", "backward"}
    assert [span.name for span in recorder.spans] == ["optimizer"]
