"""What a run reports: one JSON line per step in ``<run_dir>/metrics.jsonl``, a progress bar, a closing summary."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    """Loss tokens in the global batch (the denominator of the loss)."""
    step_time_s: float
    skipped: bool = False
    val_loss: float | None = None
    """Held-out loss after this step's update (only on validation steps)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_time_s if self.step_time_s > 0 else math.inf


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The complete lines of an existing metrics file for steps <= ``step``."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if line.endswith("\n") and json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return kept


class MetricsLog:
    """Writes metrics.jsonl and drives the progress bar; only the reporting rank creates one."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0, progress: bool = True):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        kept = _lines_up_to(self.path, start_step) if start_step else []
        self._file: TextIO = self.path.open("w")
        # A resumed run repeats the steps after its checkpoint: drop their old lines, keep the ones before.
        self._file.writelines(kept)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress)
        self.history: list[StepMetrics] = []

    def log(self, metrics: StepMetrics) -> None:
        self.history.append(metrics)
        self._file.write(json.dumps(asdict(metrics)) + "\n")
        self._file.flush()
        self._bar.set_postfix(loss=f"{metrics.loss:.4f}", tok_s=f"{metrics.tokens_per_s:,.0f}")
        self._bar.update(1)

    def write(self, message: str) -> None:
        """A line of text that does not break the progress bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
        self._file.close()

    def summary(self) -> str:
        if not self.history:
            return "no steps were run"
        first, last = self.history[0], self.history[-1]
        total_time = sum(m.step_time_s for m in self.history)
        total_tokens = sum(m.tokens for m in self.history)
        skipped = sum(m.skipped for m in self.history)
        validated = [m for m in self.history if m.val_loss is not None]
        return "\n".join([
            f"steps {first.step}..{last.step}: loss {first.loss:.4f} -> {last.loss:.4f}",
            f"time {total_time:.1f} s, {total_time / len(self.history):.3f} s/step, "
            f"{total_tokens / max(total_time, 1e-9):,.0f} loss tokens/s",
            f"skipped steps (non-finite gradients): {skipped}",
            *([f"validation loss: {validated[0].val_loss:.4f} -> {validated[-1].val_loss:.4f}"] if validated else []),
            f"metrics: {self.path}",
        ])
