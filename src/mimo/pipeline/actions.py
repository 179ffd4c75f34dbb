"""Schedule actions: the instructions a rank executes, one microbatch of one stage at a time.

A schedule is ``dict[int, list[Action]]``: for every global rank, its actions in order. Text form is
``<module>.<stage><kind><microbatch>``, e.g. ``language.1F3`` or ``images.0SEND_F2``.

Semantics (the runner and the simulator both follow them):

- ``F(m, s, mb)`` / ``B(m, s, mb)``: forward / backward of stage ``s`` of module ``m`` for microbatch ``mb``.
- ``SEND_F(m, s, mb)``: send the forward output of ``(m, s)`` to every consumer: the next stage of ``m``, or,
  from the last stage, the first stage of each successor module over the bridge (the ranks come from
  ``mimo.comm.routing.RoutingPlan.routes_out``).
- ``RECV_F(m, s, mb)``: receive every input of ``(m, s)``: from the previous stage, or, at the first stage,
  every bridge transfer from the last stage of each source module (``RoutingPlan.routes_in``).
- ``SEND_B`` / ``RECV_B`` mirror them for gradients: ``SEND_B`` goes back along ``routes_in`` (only to source
  modules that run a backward), ``RECV_B`` waits for a gradient along every ``routes_out``.
- Sends are posted at once and completed later; a channel keeps at most two hops in flight, so a send may
  first wait for the hop two before it, whose receive its peer has already posted (``mimo.comm.p2p``; never a
  deadlock: ``tests/unit/pipeline/test_bounded_sends.py``). A receive may be posted before its action (on gloo);
  the action blocks until every expected message has arrived.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple, TypeAlias

__all__ = ["Action", "ActionKind", "Schedule", "format_actions", "parse_action", "parse_actions"]


class ActionKind(StrEnum):
    F = "F"
    B = "B"
    SEND_F = "SEND_F"
    RECV_F = "RECV_F"
    SEND_B = "SEND_B"
    RECV_B = "RECV_B"

    @property
    def is_compute(self) -> bool:
        return self in (ActionKind.F, ActionKind.B)

    @property
    def is_send(self) -> bool:
        return self in (ActionKind.SEND_F, ActionKind.SEND_B)

    @property
    def is_recv(self) -> bool:
        return self in (ActionKind.RECV_F, ActionKind.RECV_B)


class Action(NamedTuple):
    """One step of one rank: ``kind`` for ``microbatch`` on pipeline ``stage`` of ``module``."""

    module: str
    stage: int
    kind: ActionKind
    microbatch: int

    def __str__(self) -> str:
        return f"{self.module}.{self.stage}{self.kind}{self.microbatch}"


Schedule: TypeAlias = dict[int, list[Action]]
"""Global rank -> that rank's actions in execution order."""


# The module part is greedy up to the last dot that is followed by a well-formed rest, so a module name may
# itself contain dots.
_KINDS = "|".join(re.escape(kind.value) for kind in ActionKind)
_ACTION_RE = re.compile(rf"(?P<module>[^\s,]+)\.(?P<stage>\d+)(?P<kind>{_KINDS})(?P<microbatch>\d+)")


def parse_action(text: str) -> Action:
    """Inverse of ``str(action)``."""
    match = _ACTION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"malformed action {text!r}; expected e.g. 'language.1F3' or 'images.0SEND_F2'")
    return Action(
        module=match["module"],
        stage=int(match["stage"]),
        kind=ActionKind(match["kind"]),
        microbatch=int(match["microbatch"]),
    )


def format_actions(actions: Iterable[Action], separator: str = " ") -> str:
    """One rank's actions as text; ``parse_actions`` reads it back."""
    return separator.join(str(action) for action in actions)


def parse_actions(text: str) -> list[Action]:
    """Actions separated by spaces and/or commas."""
    return [parse_action(token) for token in re.split(r"[\s,]+", text.strip()) if token]
