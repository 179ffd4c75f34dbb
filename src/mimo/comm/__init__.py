"""Communication between stages and modules.

``routing`` is the pure plan (who sends which samples to whom). Importing this package must never import
``torch.distributed``; the communicators that execute a plan are imported by their own module names.
"""

from __future__ import annotations

from mimo.comm.routing import (
    Route,
    RoutingPlan,
    Transfer,
    plan_bridge,
    plan_stage_edges,
    shard_samples,
    split_received_rows,
    split_rows,
    transfers_from,
    transfers_to,
)

__all__ = [
    "Route",
    "RoutingPlan",
    "Transfer",
    "plan_bridge",
    "plan_stage_edges",
    "shard_samples",
    "split_received_rows",
    "split_rows",
    "transfers_from",
    "transfers_to",
]
