"""The seed's step API: loss_func values, get_batch at exhaustion, forward_step per role, the guardrail."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mimo.config import MimoConfig
from mimo.training.mimo_step import forward_step, get_batch, loss_func, prepare_forward_step_func
from mimo.training.state import GlobalState


@pytest.mark.parametrize(
    ("output", "mask", "expected_sum", "expected_tokens"),
    [
        ([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 1], 7.0, 3),
        ([1.0, 2.0, 3.0], [1, 1, 1], 6.0, 3),
        ([1.0, 2.0, 3.0], [0, 0, 0], 0.0, 0),
    ],
)
def test_loss_func_is_masked_sum_and_token_count(output, mask, expected_sum, expected_tokens):
    total, num_tokens, report = loss_func(torch.tensor(mask, dtype=torch.float32), torch.tensor(output))
    assert total.item() == expected_sum
    assert num_tokens.dtype == torch.int32 and num_tokens.item() == expected_tokens
    assert torch.equal(report["lm loss"], torch.tensor([expected_sum, float(expected_tokens)]))


def test_loss_func_keeps_gradient_to_the_per_token_losses():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    total, _, report = loss_func(mask, losses)
    total.backward()
    assert torch.equal(losses.grad, mask)
    assert not report["lm loss"].requires_grad


def test_loss_func_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="loss_mask has 3 elements but the output has 4"):
        loss_func(torch.ones(3), torch.ones(4))


def test_get_batch_returns_none_for_no_iterator_and_at_exhaustion():
    assert get_batch(None) is None
    iterator = iter([{"x": torch.ones(1)}])
    assert torch.equal(get_batch(iterator)["x"], torch.ones(1))
    assert get_batch(iterator) is None


def test_get_batch_moves_nested_tensors_to_the_device():
    batch = {"a": torch.ones(2), "modality_inputs": {"images": {"vit": {"pixel_values": torch.ones(1, 3)}}}, "n": 3}
    moved = get_batch(iter([batch]), device="meta")
    assert moved["a"].device.type == "meta"
    assert moved["modality_inputs"]["images"]["vit"]["pixel_values"].device.type == "meta"
    assert moved["n"] == 3


class _StubStage(nn.Module):
    """A model part with a chosen role; records the batch it was called with."""

    def __init__(self, *, is_loss_stage: bool, needs_data: bool, output: object):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.is_loss_stage, self.needs_data, self._output = is_loss_stage, needs_data, output
        self.calls: list[dict] = []

    def forward(self, **batch: object) -> object:
        self.calls.append(batch)
        return self._output


def _state() -> GlobalState:
    return GlobalState(cfg=MimoConfig())


def _batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.zeros(1, 4, dtype=torch.long), "loss_mask": torch.tensor([[1.0, 1.0, 0.0, 1.0]])}


def test_forward_step_on_the_terminal_stage_returns_losses_and_bound_loss_func():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    model = _StubStage(is_loss_stage=True, needs_data=True, output=per_token)
    output, loss_fn = forward_step(_state(), iter([_batch()]), model)
    assert output is per_token
    assert isinstance(loss_fn, partial)
    total, num_tokens, _ = loss_fn(output)
    assert (total.item(), num_tokens.item()) == (7.0, 3)


def test_forward_step_on_an_intermediate_stage_returns_the_dict_and_no_loss_func():
    activations = {"language": torch.ones(1, 4, 8)}
    model = _StubStage(is_loss_stage=False, needs_data=True, output=activations)
    output, loss_fn = forward_step(_state(), iter([_batch()]), model)
    assert output is activations and loss_fn is None
    assert set(model.calls[0]) == {"input_ids", "loss_mask"}


def test_forward_step_without_data_need_does_not_read_the_iterator():
    model = _StubStage(is_loss_stage=False, needs_data=False, output={"language": torch.ones(1)})
    iterator = iter([_batch()])
    forward_step(_state(), iterator, model)
    assert model.calls == [{}]
    assert next(iterator) is not None


def test_forward_step_guardrail_rejects_a_dict_at_the_last_stage():
    model = _StubStage(is_loss_stage=True, needs_data=True, output={"images": torch.ones(1), "language": torch.ones(1)})
    with pytest.raises(ValueError, match=r"got a dict with keys \['images', 'language'\]"):
        forward_step(_state(), iter([_batch()]), model)


def test_forward_step_raises_when_a_stage_that_needs_data_gets_none():
    model = _StubStage(is_loss_stage=True, needs_data=True, output=torch.ones(1))
    with pytest.raises(RuntimeError, match="get_batch returned None at a stage that needs data"):
        forward_step(_state(), iter([]), model)
    with pytest.raises(RuntimeError, match="get_batch returned None"):
        forward_step(_state(), None, model)


def test_prepare_forward_step_func_injects_state_into_three_parameter_functions():
    state = _state()
    seen = []

    def three(state_arg, data_iterator, model):
        seen.append(state_arg)
        return "out", None

    wrapped = prepare_forward_step_func(three, state)
    assert wrapped("it", "model") == ("out", None)
    assert seen == [state]


def test_prepare_forward_step_func_passes_two_parameter_functions_through():
    def two(data_iterator, model):
        return data_iterator, model

    assert prepare_forward_step_func(two, _state()) is two


def test_prepare_forward_step_func_supports_callable_objects():
    class Step:
        def __call__(self, state, data_iterator, model):
            return state

    state = _state()
    assert prepare_forward_step_func(Step(), state)("it", "model") is state


def test_prepare_forward_step_func_rejects_other_arities():
    with pytest.raises(ValueError, match="takes 1 positional parameters"):
        prepare_forward_step_func(lambda model: None, _state())


def test_get_batch_refuses_a_re_iterable_that_would_restart():
    with pytest.raises(TypeError, match="get_batch needs an iterator, got list"):
        get_batch([{"x": torch.ones(1)}])


def test_forward_step_names_the_keys_when_the_loss_stage_batch_lacks_the_loss_mask():
    model = _StubStage(is_loss_stage=True, needs_data=True, output=torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"no 'loss_mask' \(it has \['labels'\]\)"):
        forward_step(_state(), iter([{"labels": torch.zeros(1, 4, dtype=torch.long)}]), model)
