"""train.trace and train.trace_steps: the default window, counting from the end, and bad windows named."""

from __future__ import annotations

import pytest

from mimo.config import TrainConfig, config_from_dict


@pytest.mark.parametrize(
    ("steps", "trace_steps", "window"),
    [(60, None, (2, 6)), (4, None, (2, 4)), (1, None, (1, 1)), (60, [10, 12], (10, 12)), (60, [-5, -1], (56, 60)),
     (60, [3, -1], (3, 60))],
)
def test_trace_window(steps: int, trace_steps: list[int] | None, window: tuple[int, int]) -> None:
    assert TrainConfig(steps=steps, trace_steps=trace_steps).trace_window == window


@pytest.mark.parametrize("trace_steps", [[3], [0, 2], [5, 4], [1, 61], [-61, -1]])
def test_bad_trace_steps_name_the_key(trace_steps: list[int]) -> None:
    with pytest.raises(ValueError, match="train: trace_steps"):
        config_from_dict({"train": {"steps": 60, "trace_steps": trace_steps}})


def test_trace_is_off_by_default() -> None:
    assert config_from_dict({}).train.trace is False
