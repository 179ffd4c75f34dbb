"""The check every model family's config runs before launch: does ``tp`` divide the sizes it splits? (Pure.)"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["check_divides"]


def check_divides(where: str, tp: int, sizes: Mapping[str, int]) -> None:
    """ValueError naming every size in ``sizes`` that ``tp`` does not divide, in one line."""
    bad = [f"{name}={size}" for name, size in sizes.items() if size % tp]
    if bad:
        raise ValueError(f"{where}: tp={tp} must divide {', '.join(bad)}")
