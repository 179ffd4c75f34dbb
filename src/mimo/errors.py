"""Errors that end a training run with a message instead of a hang or a bare traceback.

``ValueError`` (and ``CheckpointError``, a ValueError) means the user's input is wrong: exit code 2.
``TrainingError`` means the run failed while running (a peer died, a non-finite loss with ``on_nonfinite: stop``):
exit code 1. Both print one clear message naming what failed and where.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot go on."""


class CommunicationError(TrainingError):
    """A transfer or collective with another rank failed or timed out."""


class NonFiniteError(TrainingError):
    """A loss or gradient was not finite and the run is configured to stop."""
