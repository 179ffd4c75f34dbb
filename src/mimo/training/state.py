"""State shared by the training loop and the step functions: the config, the timers and the progress counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from mimo.training.timers import Timers

if TYPE_CHECKING:
    from mimo.config import MimoConfig


@dataclass
class TrainState:
    """Where training stands; saved with checkpoints so a run resumes where it stopped."""

    step: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    """Tokens that carried a loss (loss_mask == 1), over the whole global batch."""
    skipped_steps: int = 0
    """Steps whose update was skipped because a gradient was not finite."""

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown TrainState key {key!r} in checkpoint")
            setattr(self, key, int(value))


@dataclass
class GlobalState:
    """What ``forward_step`` may read: ``cfg``, ``timers`` and ``train_state``. Passed explicitly, never global."""

    cfg: MimoConfig
    timers: Timers = field(default_factory=Timers)
    train_state: TrainState = field(default_factory=TrainState)
