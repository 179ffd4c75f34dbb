"""What a rank says when a collective fails under it: one line naming the rank, what it holds, the operation and
the timeout, instead of a backend traceback (a peer died or hangs)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh

from mimo.errors import CommunicationError, TrainingError

__all__ = ["CollectiveFailures"]


@dataclass(frozen=True)
class CollectiveFailures:
    """The wording of this rank's collective failures."""

    rank: int
    stages: Mapping[str, int]
    """Module -> stage held by this rank."""
    timeout_s: float
    meshes: Mapping[str, DeviceMesh]
    """The meshes of this rank's sharded or tensor-parallel module stages."""

    @contextmanager
    def around(self, what: str) -> Iterator[None]:
        """Turn a failed collective into a CommunicationError that says what this rank was doing."""
        try:
            yield
        except RuntimeError as error:
            if isinstance(error, TrainingError):
                raise
            role = ", ".join(f"module {m!r} stage {s}" for m, s in self.stages.items())
            raise CommunicationError(
                f"rank {self.rank} ({role}): {what} failed: a peer died or did not answer within "
                f"train.collective_timeout_s={self.timeout_s} ({error})"
            ) from error

    def inside_meshes(self, what: str) -> AbstractContextManager[None]:
        """FSDP gathers weights and reduces gradients, and tensor parallelism sums partial results, inside the
        forward and backward of a module with a mesh, so a peer that dies there is reported like any other
        collective. Without a mesh nothing is wrapped: a RuntimeError in a forward is then a bug to show as it
        is, not a peer to blame."""
        if not self.meshes:
            return nullcontext()
        modules = ", ".join(f"module {module!r}" for module in self.meshes)
        axes = {name for mesh in self.meshes.values() for name in mesh.mesh_dim_names or ()}
        work = [text for axis, text in (("dp_shard", "FSDP gathers and reduces over the shard ranks"),
                                        ("tp", "tensor parallelism sums over the tp ranks")) if axis in axes]
        return self.around(f"{what} ({modules}: {' and '.join(work)})")
