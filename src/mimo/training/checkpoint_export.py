"""``mimo export``: turn any checkpoint, from any layout, into one consolidated safetensors file."""

from __future__ import annotations

from pathlib import Path

from mimo.checkpoint import CheckpointError, CheckpointStore, load_tensors, read_json, read_tensor_shapes
from mimo.config import MimoConfig, config_from_dict
from mimo.export import load_consolidated, save_safetensors
from mimo.model import MimoModel
from mimo.checkpoint.manifest import path_sha256
from mimo.training.checkpointing import FORMAT, frozen_hf_fingerprints


def export_checkpoint(
    checkpoint: str | Path, out: str | Path | None = None, *, hf: str | Path | None = None
) -> list[Path]:
    """Rebuild the whole model from a checkpoint (frozen weights from their recorded source) and write it as one
    safetensors file (``out``) and/or Hugging Face folders (``hf``); returns what was written."""
    if out is None and hf is None:
        raise ValueError("mimo export needs --out FILE, --hf DIR, or both")
    if hf is not None and Path(hf).exists() and (not Path(hf).is_dir() or any(Path(hf).iterdir())):
        raise ValueError(f"--hf {str(hf)!r} exists and is not an empty folder")
    cfg, model = load_checkpoint_model(checkpoint)
    written = []
    if out is not None:
        written.append(save_safetensors(model.state_dict(), out))
    if hf is not None:
        from mimo.model.hf.export import export_hf

        written.append(export_hf(model.state_dict(), cfg.model, hf).parent)
    return written


def load_checkpoint_model(checkpoint: str | Path) -> tuple[MimoConfig, MimoModel]:
    """The run's config and its whole model with the checkpoint's weights (frozen ones from their source)."""
    checkpoint = Path(checkpoint)
    store = CheckpointStore(checkpoint)
    folder = store.resolve(checkpoint)
    store.verify(folder)
    meta = read_json(folder / "meta.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / 'meta.json'} is not a {FORMAT} file")
    cfg = config_from_dict(meta["config"])
    source = meta["frozen_parameters_from"]
    if source.get("hf_sha256") and frozen_hf_fingerprints(cfg) != source["hf_sha256"]:
        raise CheckpointError(
            f"{folder} references frozen weights to the Hugging Face folders {sorted(source['hf_sha256'])}, which "
            "are missing or have changed since the run started (sha256 differs)"
        )
    model = MimoModel(cfg.model, seed=source["seed"])
    found = read_tensor_shapes(folder / "dcp")
    referenced = [name for name, _ in model.named_parameters() if f"model.{name}" not in found]
    if referenced and source["init_from"]:
        # Frozen weights were not saved: they come from the file the run started from.
        init_file = Path(source["init_from"])
        if not init_file.exists() or path_sha256(init_file) != source["init_from_sha256"]:
            raise CheckpointError(
                f"{folder} references {len(referenced)} frozen parameters to {init_file}, which is missing or has "
                "changed since the run started (sha256 differs)"
            )
        load_consolidated(model, init_file)
    weights = {f"model.{name}": p.data for name, p in model.named_parameters() if f"model.{name}" in found}
    load_tensors(weights, folder / "dcp")
    return cfg, model
