"""SIGTERM handling: the first signal asks for a clean stop at the end of the step, the second exits at once.

Schedulers (SLURM, Kubernetes, torchrun itself) send SIGTERM before killing a job. The handler only sets a flag;
the trainer agrees on it across ranks after every step, so all ranks stop after the same step, write a
checkpoint if configured, and exit 0. The handler then restores the default action, so a second SIGTERM ends the
process at once, even while it is blocked inside a collective where no Python handler could run.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)


class PreemptionHandler:
    """Installs a SIGTERM handler for the duration of training; restores the previous one on ``close``."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        logger.warning("SIGTERM received: finishing this step, then saving a checkpoint (if configured) and exiting; "
                       "send SIGTERM again to exit at once")

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
