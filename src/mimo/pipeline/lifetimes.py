"""What a rank's action list says ahead of time: which messages it will receive, and when each microbatch's
tensors are needed for the last time. Pure: the runner uses it to post receives early and free records early.
"""

from __future__ import annotations

from collections.abc import Sequence

from mimo.pipeline.actions import Action, ActionKind

__all__ = ["last_uses", "receive_order"]


def receive_order(actions: Sequence[Action]) -> tuple[list[int], list[int]]:
    """Microbatches of the ``RECV_F`` and of the ``RECV_B`` actions, each in execution order."""
    forward = [a.microbatch for a in actions if a.kind is ActionKind.RECV_F]
    backward = [a.microbatch for a in actions if a.kind is ActionKind.RECV_B]
    return forward, backward


def last_uses(actions: Sequence[Action]) -> dict[int, int]:
    """Index of the last action of each microbatch: after it, nothing of that microbatch is needed.

    In training that is ``SEND_B`` (or ``B``); in a forward-only run, ``SEND_F`` (or ``F`` on the loss stage), so
    a forward-only stage holds one microbatch at a time instead of all of them until the end of the step.
    """
    return {action.microbatch: index for index, action in enumerate(actions)}
