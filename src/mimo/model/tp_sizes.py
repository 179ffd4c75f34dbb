"""The check every model family's config runs before launch: does ``tp`` divide the sizes it splits? (Pure: the
config modules, which import neither torch nor transformers, share it.)"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["check_divides"]


def check_divides(tp: int, sizes: Mapping[str, int], owner: str) -> None:
    """ValueError naming ``owner``, ``tp`` and every size in ``sizes`` that ``tp`` does not divide (one line)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"{owner}: tp must be a positive integer, got {tp!r}")
    bad = [f"{name}={size}" for name, size in sizes.items() if size % tp]
    if bad:
        nor = f" (nor {', '.join(bad[1:])})" if len(bad) > 1 else ""
        raise ValueError(f"{owner}: tp={tp} does not divide {bad[0]}{nor}")
