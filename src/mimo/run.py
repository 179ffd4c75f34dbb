"""One training run from a validated config: start processes' groups, train, export, shut down."""

from __future__ import annotations

import os
from pathlib import Path

from mimo.config import MimoConfig
from mimo.distributed import init_distributed, shutdown_distributed
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
