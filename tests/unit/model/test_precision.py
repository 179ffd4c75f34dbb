"""bf16 compute over fp32 master weights, per module, in one process: where autocast is on, what dtype the
activations leaving a stage have, the dtype of the gradients that come back, and that fp32 runs never autocast."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mimo.activation_keys import counts_key
from mimo.comm.channel import ChannelState
from mimo.comm.wire import HEADER_BYTES, Kind, Layout, aligned, layout_of, pack, unpack
from mimo.config import ModuleComputeConfig, config_from_dict
from mimo.data import LOSS_MASK, SyntheticMimoDataset, collate
from mimo.model import MimoModel
from mimo.model.compute import apply_compute, to_compute_dtype
from mimo.model.stages import LanguageStage, ModalityStage

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
pytestmark = pytest.mark.timeout(60)


def _setup(precisions: dict[str, str]):
    raw = yaml.safe_load((CONFIGS / "tiny_vlm.yaml").read_text())
    raw["data"]["num_samples"] = 8
    cfg = config_from_dict(copy.deepcopy(raw))
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    batch = collate([dataset[i] for i in range(4)])
    settings = {m: ModuleComputeConfig(precision=precisions.get(m, "fp32")) for m in cfg.model.module_names}
    return cfg, batch, settings


def _autocast_by_linear(model: nn.Module) -> dict[str, bool]:
    """Install hooks recording, for every Linear, whether autocast was on when it ran."""
    seen: dict[str, bool] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(
                lambda _m, _i, _o, name=name: seen.__setitem__(name, torch.is_autocast_enabled("cpu"))
            )
    return seen


@pytest.mark.parametrize(
    ("precisions", "autocast_in"),
    [({}, set()), ({"images": "bf16", "language": "bf16"}, {"images", "language"}),
     ({"images": "bf16"}, {"images"}), ({"language": "bf16"}, {"language"})],
)
def test_autocast_runs_exactly_in_the_bf16_modules_and_master_state_stays_fp32(precisions, autocast_in):
    cfg, batch, settings = _setup(precisions)
    model = MimoModel(cfg.model, seed=0)
    apply_compute(model, settings)
    seen = _autocast_by_linear(model)
    per_token = model(**batch)
    assert len(seen) > 5
    for name, enabled in seen.items():
        module = "language" if name.startswith("language.") else name.split(".")[1]
        assert enabled == (module in autocast_in), f"{name}: autocast {'on' if enabled else 'off'}"
    assert per_token.dtype == torch.float32  # the per-token loss is fp32 whatever the precision
    mask = batch[LOSS_MASK]
    ((per_token * mask).sum() / mask.sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name


def test_fp32_is_bit_for_bit_the_model_without_any_setting():
    cfg, batch, settings = _setup({})
    plain = MimoModel(cfg.model, seed=0)(**batch)
    configured = MimoModel(cfg.model, seed=0)
    apply_compute(configured, settings)
    assert torch.equal(configured(**batch), plain)
    outputs = {"language": torch.randn(2, 3)}
    assert to_compute_dtype(outputs, "fp32") is outputs  # no cast, not even a no-op copy


def test_bf16_loss_is_close_to_fp32_but_not_equal():
    """bf16 really changes the arithmetic (a test that compared equal would mean autocast never ran)."""
    cfg, batch, settings = _setup({"images": "bf16", "language": "bf16"})
    reference = MimoModel(cfg.model, seed=0)(**batch)
    model = MimoModel(cfg.model, seed=0)
    apply_compute(model, settings)
    got = model(**batch)
    mask = batch[LOSS_MASK]
    want_loss, got_loss = (reference * mask).sum() / mask.sum(), (got * mask).sum() / mask.sum()
    assert not torch.equal(got, reference)
    assert abs((got_loss - want_loss).item()) <= 1e-2 * want_loss.item()


def test_stage_outputs_travel_in_bf16_and_their_gradients_come_back_in_bf16():
    cfg, batch, _ = _setup({})
    bf16 = ModuleComputeConfig(precision="bf16")
    images = ModalityStage(cfg.model, "images", seed=0)
    first = LanguageStage(cfg.model, stage=0, num_stages=2, layers=range(0, 1), seed=0)
    last = LanguageStage(cfg.model, stage=1, num_stages=2, layers=range(1, 2), seed=0)
    for stage, module in ((images, "images"), (first, "language"), (last, "language")):
        apply_compute(stage, {module: bf16})
    # images -> language stage 0 (a bridge), then stage 0 -> stage 1 (a pipeline hop), as the runner does.
    rows = images(inputs={}, modality_inputs=batch["modality_inputs"])
    assert rows["images"].dtype == torch.bfloat16 and rows[counts_key("images")].dtype == torch.int64
    received_rows = {key: value.detach().requires_grad_(value.is_floating_point()) for key, value in rows.items()}
    hidden = first(inputs=received_rows, input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert hidden["language"].dtype == torch.bfloat16
    received_hidden = hidden["language"].detach().requires_grad_(True)
    per_token = last(inputs={"language": received_hidden}, labels=batch["labels"])
    assert per_token.dtype == torch.float32
    (per_token * batch[LOSS_MASK]).sum().backward()
    # Each gradient sent back has the dtype of the activation it belongs to ...
    assert received_hidden.grad is not None and received_hidden.grad.dtype == torch.bfloat16
    hidden["language"].backward(received_hidden.grad)
    assert received_rows["images"].grad is not None and received_rows["images"].grad.dtype == torch.bfloat16
    rows["images"].backward(received_rows["images"].grad)
    # ... while every parameter and gradient stays fp32.
    for stage in (images, first, last):
        for name, parameter in stage.named_parameters():
            assert parameter.dtype == torch.float32 and parameter.grad.dtype == torch.float32, name


def test_the_wire_sizes_a_bf16_payload_by_its_element_size_and_a_dtype_change_is_a_new_layout():
    tensors = {"language": torch.randn(3, 5).to(torch.bfloat16), counts_key("language"): torch.tensor([1, 2])}
    layout = Layout(layout_of(tensors))
    assert layout.nbytes == aligned(3 * 5 * 2) + aligned(2 * 8)
    buffer = torch.empty(layout.nbytes, dtype=torch.uint8)
    pack(tensors, layout, buffer)
    for key, value in unpack(buffer, layout).items():
        assert value.dtype == tensors[key].dtype and torch.equal(value, tensors[key])
    state = ChannelState()
    state.advance(Kind.TAIL, layout)
    assert state.envelope_nbytes() == HEADER_BYTES + layout.nbytes
    assert state.kind_for(layout_of(tensors)) is Kind.INLINE
    as_fp32 = {key: value.float() if value.is_floating_point() else value for key, value in tensors.items()}
    assert state.kind_for(layout_of(as_fp32)) is Kind.TAIL  # same shapes, other dtype: not the agreed layout
