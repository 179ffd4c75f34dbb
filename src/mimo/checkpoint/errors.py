"""The one error type of the checkpoint package, and a helper that keeps long problem lists readable."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CheckpointError", "format_problems"]

MAX_LISTED_PROBLEMS = 20
"""How many problem lines an error message shows before summarising the rest as "and N more"."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or does not fit the model (a user-facing problem)."""


def format_problems(headline: str, problems: Sequence[str], *, limit: int = MAX_LISTED_PROBLEMS) -> str:
    """``headline`` followed by one indented line per problem, at most ``limit`` of them, then "and N more"."""
    lines = [headline, *(f"  {problem}" for problem in problems[:limit])]
    if len(problems) > limit:
        lines.append(f"  and {len(problems) - limit} more")
    return "\n".join(lines)
