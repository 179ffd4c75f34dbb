"""Every layout trains exactly like one process running the plain model (loss and weights, fp32, rtol 1e-5).

Each case trains 3 SGD steps on several gloo processes and compares with ``reference_run``. The data has 0, 1
or 2 images (and audio clips) per sample, so variable row counts cross every bridge.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mimo.config import config_from_dict
from mimo.data import MicrobatchLoader, SyntheticMimoDataset
from mimo.model import MimoModel
from tests.parity.harness import (
    assert_adamw_run_matches,
    assert_run_matches_reference,
    assert_same_training,
    distributed_run,
)
from tests.parity.reference import reference_training

pytestmark = pytest.mark.distributed

STEPS = 3

VISION = {"kind": "vision", "image_size": 8, "patch_size": 4, "num_channels": 3, "hidden_size": 16,
          "num_layers": 2, "num_heads": 2}
AUDIO = {"kind": "audio", "num_mel_bins": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
         "downsample": 4, "max_frames": 16}


def _config(*, audio: bool = False, layout: dict | None = None, num_microbatches: int = 2,
            global_batch_size: int = 8, freeze: list[str] | None = None, **data: Any) -> dict[str, Any]:
    modalities = {"images": {"placeholder_id": 1, "encoders": {"vit": VISION}}}
    if audio:
        modalities["audio"] = {"placeholder_id": 2, "encoders": {"mel": AUDIO}}
    return {
        "model": {
            "language": {"vocab_size": 48, "hidden_size": 32, "num_layers": 4, "num_heads": 4, "max_seq_len": 48},
            "modalities": modalities,
        },
        "data": {"num_samples": 64, "seq_length": 40 if audio else 32, "max_items_per_sample": 2,
                 "item_presence": 0.7, "min_frames": 4, **data},
        "train": {"steps": STEPS, "global_batch_size": global_batch_size, "num_microbatches": num_microbatches,
                  "progress": False},
        "optim": {"default": {"name": "sgd", "lr": 0.5}, "lr_schedule": {"decay": "constant"}, "clip_grad": 5.0,
                  "freeze": freeze or []},
        "layout": layout or {},
    }


def _layout(**modules: tuple[int, int, int]) -> dict[str, dict[str, int]]:
    """``images=(dp, pp, rank_offset)`` -> the config's layout section."""
    return {name: {"dp": dp, "pp": pp, "rank_offset": offset} for name, (dp, pp, offset) in modules.items()}


CASES = {
    "colocated_dp2": (2, _config()),
    "images1_language_pp2": (3, _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)))),
    "fan_in_images_dp2_language_dp1": (3, _config(layout=_layout(images=(2, 1, 0), language=(1, 1, 2)))),
    "fan_out_images_dp1_language_dp2": (3, _config(layout=_layout(images=(1, 1, 0), language=(2, 1, 1)))),
    "images_dp2_language_dp2_pp2": (6, _config(layout=_layout(images=(2, 1, 0), language=(2, 2, 2)))),
    "images_pp2_language_pp2": (4, _config(layout=_layout(images=(1, 2, 0), language=(1, 2, 2)))),
    "images_audio_language_pp2": (
        4, _config(audio=True, layout=_layout(images=(1, 1, 0), audio=(1, 1, 1), language=(1, 2, 2)))
    ),
    "text_only": (3, _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)), item_presence=0.0)),
    "frozen_images": (3, _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)), freeze=["images"])),
    "frozen_language": (3, _config(layout=_layout(images=(2, 1, 0), language=(1, 1, 2)), freeze=["language"])),
    "one_microbatch": (3, _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)), num_microbatches=1)),
    "five_microbatches": (
        3, _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)), num_microbatches=5, global_batch_size=10)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layout_matches_single_process_reference(case, tmp_path):
    world_size, raw = CASES[case]
    cfg = config_from_dict(copy.deepcopy(raw))
    initial = {name: t.detach().clone() for name, t in MimoModel(cfg.model, seed=cfg.train.seed).state_dict().items()}
    assert_run_matches_reference(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=initial)


def test_parity_data_has_variable_items_per_sample():
    """The cases above only prove variable-count routing if the data really varies (0, 1 and 2 images)."""
    cfg = config_from_dict(_config())
    loader = MicrobatchLoader(SyntheticMimoDataset(cfg.data, cfg.model), global_batch_size=8, num_microbatches=2)
    counts = set()
    for _ in range(STEPS):
        for batch in loader.next_step():
            counts.update(batch["modality_inputs"]["images"]["vit"]["items_per_sample"].tolist())
    assert {0, 1, 2} <= counts


# --- Clipping that fires, and AdamW with warmup (``reference_training``: the same loop, other updates) ---------


def _with_optim(raw: dict[str, Any], **optim: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    raw["optim"].update(copy.deepcopy(optim))
    return raw


CLIP_GRAD = 0.1  # the gradient norm of these (clipped) steps is ~0.8-2.3: clipping scales every step
CLIPPED = (3, _with_optim(_config(layout=_layout(images=(2, 1, 0), language=(1, 1, 2))), clip_grad=CLIP_GRAD))
ADAMW = (
    4,
    _with_optim(
        _config(audio=True, layout=_layout(images=(1, 1, 0), audio=(1, 1, 1), language=(1, 2, 2))),
        default={"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        modules={"images": {"name": "adamw", "lr": 1e-2, "beta2": 0.99}},
        lr_schedule={"warmup_steps": 2, "decay": "constant"},
        clip_grad=1.0,
    ),
)


def _initial(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = config_from_dict(copy.deepcopy(raw))
    return {name: t.detach().clone() for name, t in MimoModel(cfg.model, seed=cfg.train.seed).state_dict().items()}


def test_clipping_fires_and_matches_reference(tmp_path):
    world_size, raw = CLIPPED
    ref = reference_training(raw, STEPS)
    assert all(norm > 2 * CLIP_GRAD for norm in ref.grad_norms), f"clipping must fire every step: {ref.grad_norms}"
    losses, weights = distributed_run(raw, STEPS, world_size=world_size, tmp_path=tmp_path)
    assert all(rank_losses == losses[0] for rank_losses in losses), f"ranks disagree on the loss: {losses}"
    assert_same_training(losses[0], weights, ref.losses, ref.weights, initial=_initial(raw))


def test_adamw_with_warmup_matches_reference(tmp_path):
    """AdamW (per-module lr and betas, weight decay) and linear warmup: loss within 1e-5, weights within 1e-4."""
    world_size, raw = ADAMW
    optim = raw["optim"]
    max_lr = max(opt["lr"] for opt in [optim["default"], *optim["modules"].values()])
    assert_adamw_run_matches(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=_initial(raw),
                             max_lr=max_lr)
