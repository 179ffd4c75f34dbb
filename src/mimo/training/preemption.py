"""SIGTERM handling: the first signal asks for a clean stop at the end of the step, the second exits at once.

Schedulers (SLURM, Kubernetes, torchrun itself) send SIGTERM before killing a job. The handler only sets a flag;
the trainer agrees on it across ranks after every step, so all ranks stop after the same step, write a
checkpoint if configured, and exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

logger = logging.getLogger(__name__)

EXIT_CODE_SECOND_SIGNAL = 128 + signal.SIGTERM


class PreemptionHandler:
    """Installs a SIGTERM handler for the duration of training; restores the previous one on ``close``."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            # Second signal: the user (or scheduler) does not want to wait for the checkpoint.
            os._exit(EXIT_CODE_SECOND_SIGNAL)
        self.requested = True
        logger.warning("SIGTERM received: finishing this step, then saving a checkpoint (if configured) and exiting; "
                       "send SIGTERM again to exit at once")

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
