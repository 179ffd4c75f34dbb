"""Bytes per rank under each layout: parameters, gradients, optimizer state and activations, against theory.

    .venv/bin/python benchmarks/memory.py                 # the 110M-parameter model, every layout (a few minutes)
    .venv/bin/python benchmarks/memory.py --quick         # a 1M-parameter model (a smoke run, well under a minute)
    .venv/bin/python benchmarks/memory.py --layouts dp2 shard2

Each layout runs as its own torchrun world (gloo, CPU) training two AdamW steps of the same image + text model
(most of it the language model), and every rank reports:

- parameters, gradients, optimizer state: the bytes of the tensors this rank holds (a sharded tensor's local
  shard), after the second step;
- activations: the peak, during the second step, of the bytes autograd keeps for the backward (tensors saved by
  the forward, counted once per storage, weights excluded: also the whole weights FSDP gathers for a layer's
  forward, which it frees and gathers again for the backward), measured with ``saved_tensors_hooks``.

The table prints the largest value over the ranks holding the language model next to the theory: the module's
parameter count P times 4 bytes for the weights and the gradients and 8 for AdamW's two moments, divided by the
sharding degree (``dp_shard``) and by ``tp`` (except the few parameters tensor parallelism leaves whole on every
rank: norms, the position table, the bias of each projection split by input columns), or by ``pp`` for a pipeline stage
(approximate: the embedding and the head make stages uneven). Activation theory is not attempted: the column to
read is how checkpointing changes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

LARGE = {"vocab_size": 16384, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_seq_len": 128}
"""About 110M parameters (12 layers of 7.1M, untied embedding and head of 12.6M each)."""
SMALL = {"vocab_size": 512, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "max_seq_len": 128}

LAYOUTS: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    # name: (ranks, layout, train overrides)
    "one process": (1, {}, {}),
    "dp2": (2, {"images": {"dp": 2}, "language": {"dp": 2}}, {}),
    "shard2": (2, {"images": {"dp": 2}, "language": {"dp_shard": 2}}, {}),
    "shard4": (4, {"images": {"dp": 4}, "language": {"dp_shard": 4}}, {}),
    "tp2": (3, {"images": {"rank_offset": 0}, "language": {"tp": 2, "rank_offset": 1}}, {}),
    "tp4": (5, {"images": {"rank_offset": 0}, "language": {"tp": 4, "rank_offset": 1}}, {}),
    "shard2 + tp2": (5, {"images": {"rank_offset": 0}, "language": {"dp_shard": 2, "tp": 2, "rank_offset": 1}}, {}),
    "pp2": (3, {"images": {"rank_offset": 0}, "language": {"pp": 2, "rank_offset": 1}}, {}),
    "pp2 + checkpointing": (3, {"images": {"rank_offset": 0}, "language": {"pp": 2, "rank_offset": 1}},
                            {"activation_checkpointing": "full"}),
    "one process + checkpointing": (1, {}, {"activation_checkpointing": "full"}),
}


def recipe(language: dict[str, Any], layout: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_dir": "unused",
        "model": {"language": language, "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
            "kind": "vision", "image_size": 16, "patch_size": 4, "num_channels": 3, "hidden_size": 64,
            "num_layers": 1, "num_heads": 2}}}}},
        "data": {"num_samples": 64, "seq_length": 96, "max_items_per_sample": 1},
        "layout": layout,
        "train": {"steps": 2, "global_batch_size": 8, "num_microbatches": 2, "progress": False, **train},
        "optim": {"default": {"name": "adamw", "lr": 1e-4}},
        "checkpoint": {"at_end": False},
    }


def _local(tensor: Any) -> Any:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _bytes(tensors: Any) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


class SavedBytes:
    """Live bytes autograd keeps for the backward, one count per storage, and their peak."""

    def __init__(self, parameters: Callable[[], Iterable[Any]]) -> None:
        self.parameters, self.live, self.peak = parameters, 0, 0
        self._refs: dict[int, int] = {}

    def pack(self, tensor: Any) -> Any:
        storage = _local(tensor).untyped_storage()  # a DTensor (tensor parallelism) keeps its part in a local tensor
        key = storage.data_ptr()
        # Asked at every pack: FSDP registers the gathered (unsharded) weights on the module during its forward,
        # and those are weights, not activations.
        if tensor.device.type == "meta" or key in {_local(p).untyped_storage().data_ptr() for p in self.parameters()}:
            return tensor
        if key not in self._refs:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] = self._refs.get(key, 0) + 1
        holder = _Held(tensor)
        weakref.finalize(holder, self._release, key, storage.nbytes())
        return holder

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= nbytes

    @staticmethod
    def unpack(packed: Any) -> Any:
        return packed.tensor if isinstance(packed, _Held) else packed


class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


@contextmanager
def counting(saved: SavedBytes) -> Iterator[None]:
    import torch

    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        yield


def worker(raw: dict[str, Any], out: Path) -> None:
    """One rank: build the trainer, take two steps (the second one measured), write this rank's figures."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from mimo.config import config_from_dict
    from mimo.distributed import init_distributed, shutdown_distributed
    from mimo.training.run_plan import plan_run
    from mimo.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = config_from_dict(raw)
    plan = plan_run(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    ctx = init_distributed("cpu", timeout_s=300)
    try:
        trainer = Trainer(cfg, ctx, plan)
        trainer.train_step()  # optimizer state exists after the first step
        model = trainer.engine.model
        saved = SavedBytes(model.parameters)
        with counting(saved):
            trainer.train_step()
        language = _language_parameters(trainer.engine)
        ids = {id(p) for p in language}
        states = [value for optimizer in trainer.optimizers.optimizers.values()
                  for parameter, state in optimizer.state.items() if id(parameter) in ids
                  for value in state.values() if torch.is_tensor(value) and value.dim() > 0]
        figures = {
            "rank": ctx.rank,
            "holds_language": bool(language),
            "parameters": _bytes(language),
            "gradients": _bytes(p.grad for p in language if p.grad is not None),
            "optimizer": _bytes(states),
            "activations": saved.peak,
        }
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(figures))
    finally:
        shutdown_distributed()


def _language_parameters(engine: Any) -> list[Any]:
    """The language model's parameters on this rank: a pipeline stage's all when it is a language stage, the
    ``language.`` ones of a colocated model."""
    module = getattr(engine, "module", None)
    if module is not None:
        return list(engine.model.parameters()) if module == "language" else []
    return [p for name, p in engine.model.named_parameters() if name.startswith("language.")]


def run_layout(name: str, language: dict[str, Any], scratch: Path) -> dict[str, Any]:
    ranks, layout, train = LAYOUTS[name]
    raw = recipe(language, layout, train)
    folder = scratch / name.replace(" ", "_").replace("+", "plus")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(raw))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               __file__, "--worker", str(folder)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    reports = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]
    holding = [r for r in reports if r["holds_language"]] or reports
    return {key: max(r[key] for r in holding) for key in ("parameters", "gradients", "optimizer", "activations")}


WHOLE_UNDER_TP = ("norm.weight", "embedding.position.weight", "attention_out.bias", "mlp.2.bias")
"""Language parameters that tensor parallelism keeps whole on every rank (``mimo.model.tensor_parallel``)."""


def language_parameters(language: dict[str, Any]) -> tuple[int, int]:
    """The language model's parameter count, and how many of them tensor parallelism keeps whole."""
    sys.path.insert(0, str(ROOT / "src"))
    from mimo.config import config_from_dict
    from mimo.model import MimoModel

    model = MimoModel(config_from_dict(recipe(language, {}, {})).model)
    named = [(name, p.numel()) for name, p in model.named_parameters() if name.startswith("language.")]
    return sum(n for _, n in named), sum(n for name, n in named if name.endswith(WHOLE_UNDER_TP))


def theory(name: str, parameters: int, whole_under_tp: int) -> float:
    _, layout, _ = LAYOUTS[name]
    spec = layout.get("language", {})
    tp = spec.get("tp", 1)
    split = parameters - whole_under_tp if tp > 1 else parameters
    return (split / tp + (parameters - split)) / (spec.get("dp_shard", 1) * spec.get("pp", 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1M-parameter model instead of 110M")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads((args.worker / "config.json").read_text()), args.worker)
        return
    language = copy.deepcopy(SMALL if args.quick else LARGE)
    count, whole_under_tp = language_parameters(language)
    mib = 1 << 20
    print(f"language model: {count / 1e6:.1f}M parameters; MiB per rank (largest over the language ranks), "
          "measured / theory")
    print(f"{'layout':<28} {'parameters':>17} {'gradients':>17} {'optimizer':>17} {'activations':>11}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.layouts:
            row = run_layout(name, language, Path(scratch))
            if "error" in row:
                print(f"{name:<28} failed: {row['error']}")
                continue
            share = theory(name, count, whole_under_tp)
            cells = [f"{row[k] / mib:8.1f} / {share * per / mib:<6.1f}"
                     for k, per in (("parameters", 4), ("gradients", 4), ("optimizer", 8))]
            print(f"{name:<28} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17} {row['activations'] / mib:>11.1f}")


if __name__ == "__main__":
    main()
