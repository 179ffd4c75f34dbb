"""One training run from a validated config: start processes' groups, train, export, shut down."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import torch.distributed as dist

from mimo.config import MimoConfig
from mimo.distributed import init_distributed, raise_if_any_rank_failed, shutdown_distributed
from mimo.export import gather_consolidated, save_safetensors
from mimo.training.metrics import StepMetrics
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer


def run_training(
    config: MimoConfig,
    *,
    export_path: str | Path | None = None,
    export_hf: str | Path | None = None,
    resume: str | None = None,
    init_from: str | None = None,
) -> list[StepMetrics]:
    # Validate the paths and the layout against the launch before joining any process group, so mistakes cannot hang.
    check_paths(config, init_from=init_from, export_hf=export_hf)
    plan = plan_run(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    ctx = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    try:
        if spans_several_nodes() and (_writes_checkpoints(config) or resume is not None):
            check_shared_directory("checkpoint.dir", Path(config.checkpoint_dir), rank=ctx.rank)
        trainer = Trainer(config, ctx, plan, init_from=init_from)
        if resume is not None:
            trainer.resume(resume)
        history = trainer.train()
        if export_path is not None or export_hf is not None:
            weights = gather_consolidated(trainer)
            if weights is not None and export_path is not None:
                print(f"weights: {save_safetensors(weights, export_path)}")
            if weights is not None and export_hf is not None:
                from mimo.model.hf.export import export_hf as write_hf

                print(f"hugging face export: {write_hf(weights, config.model, export_hf).parent}")
    except BaseException:
        # No barrier on the way out: the other ranks may be the ones that failed.
        shutdown_distributed(wait_for_peers=False)
        raise
    shutdown_distributed()
    return history


def check_paths(
    config: MimoConfig, *, init_from: str | Path | None = None, export_hf: str | Path | None = None
) -> None:
    """The paths a run writes to and reads from, checked before any process group exists (``ValueError``).

    ``run_dir`` and the checkpoint root must be directories or creatable as such (no part of them an existing
    file); ``init_from`` must be a safetensors file (only its header is read here) or an ``--export-hf``
    folder; ``export_hf`` must not be a file or a folder with something in it.
    """
    for key, value in (("run_dir", config.run_dir), ("checkpoint.dir", config.checkpoint_dir)):
        _check_directory(key, Path(value))
    if init_from is not None:
        _check_init_from(Path(init_from))
    if export_hf is not None:
        _check_directory("--export-hf", Path(export_hf))
        if Path(export_hf).is_dir() and any(Path(export_hf).iterdir()):
            raise ValueError(f"--export-hf {str(export_hf)!r} is a folder that is not empty: pass a new folder")


def _check_directory(key: str, path: Path) -> None:
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "" if part == path else f" ({str(part)!r} is a file)"
                raise ValueError(f"{key} {str(path)!r} is not a directory{where}: pass a directory to write the "
                                 f"run's files into")
            return


def _check_init_from(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        from mimo.model.hf.export import MANIFEST

        if (path / MANIFEST).is_file():
            return
        raise ValueError(
            f"--init-from {str(path)!r} is a directory, neither a safetensors file nor a folder written by "
            f"--export-hf (no {MANIFEST})"
        )
    if not path.is_file():
        raise ValueError(f"--init-from {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise ValueError(f"--init-from {str(path)!r} is not a safetensors file ({error})") from None


SHARED_PROBE_WAIT_S = 2.0
"""How long a rank looks for rank 0's probe file: a shared file system may show a new name a moment late."""


def spans_several_nodes() -> bool:
    """True under a torchrun launch whose processes are not all on this machine (``LOCAL_WORLD_SIZE < WORLD_SIZE``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))) < world_size


def _writes_checkpoints(config: MimoConfig) -> bool:
    checkpoint = config.checkpoint
    return checkpoint.at_end or checkpoint.on_preemption or checkpoint.every_steps > 0


def check_shared_directory(key: str, path: Path, *, rank: int) -> None:
    """Collective: every rank must see a file that rank 0 creates in ``path``, or every rank raises ``ValueError``.

    A checkpoint is written by every rank into one staging folder that rank 0 then hashes, seals and renames. On
    disks local to each machine, rank 0 would seal a checkpoint without the other machines' shards and nothing would
    fail until a resume; this finds it before the first step instead.
    """
    probe, error = None, None
    if rank == 0:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".mimo-shared-probe-{uuid.uuid4().hex[:16]}"
            probe.write_text(socket.gethostname() + "\n")
        except OSError as caught:  # reported below on every rank: the others must not wait for a probe
            probe, error = None, ValueError(f"cannot write into {key} {str(path)!r}: {caught}")
    box = [(None if probe is None else probe.name, socket.gethostname())]
    dist.broadcast_object_list(box, src=0)
    name, host_of_rank0 = box[0]
    if name is not None:
        deadline = time.monotonic() + SHARED_PROBE_WAIT_S
        while not (path / name).is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not (path / name).is_file():
            error = ValueError(
                f"{key} {str(path)!r} is not shared by every machine of the run: rank {rank} on "
                f"{socket.gethostname()} does not see the file {name} that rank 0 created there on {host_of_rank0}; "
                f"every rank writes its part of a checkpoint into that folder, so put run_dir (or checkpoint.dir) "
                f"on a file system that every machine mounts at the same path"
            )
    try:
        raise_if_any_rank_failed(error)  # also keeps the probe in place until every rank has looked
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
