"""backward_step_multimodule over dicts: loss outputs, dict outputs, frozen sources, metadata entries."""

from __future__ import annotations

import pytest
import torch

from mimo.pipeline.backward import backward_step_multimodule


def test_loss_output_backpropagates_to_every_input_that_needs_grad():
    images = torch.randn(3, 4, requires_grad=True)
    audio = torch.randn(2, 4, requires_grad=True)
    frozen = torch.randn(2, 4)
    loss = (images * 2).sum() + (audio**2).sum() + frozen.sum()
    grads = backward_step_multimodule(
        {"images": images, "audio": audio, "frozen": frozen, "images/tokens_per_sample": torch.tensor([3])},
        loss, None,
    )
    assert sorted(grads) == ["audio", "images"]
    torch.testing.assert_close(grads["images"], torch.full((3, 4), 2.0))
    torch.testing.assert_close(grads["audio"], 2 * audio.detach())


def test_dict_outputs_use_the_received_output_gradients():
    hidden = torch.randn(2, 3, requires_grad=True)
    weight = torch.randn(3, 3)
    output = {"language": hidden @ weight, "language/meta": torch.tensor([1, 2])}
    upstream = torch.randn(2, 3)
    grads = backward_step_multimodule({"language": hidden}, output, {"language": upstream})
    torch.testing.assert_close(grads["language"], upstream @ weight.T)


def test_an_input_the_output_does_not_use_gets_a_zero_gradient():
    used, unused = torch.randn(2, requires_grad=True), torch.randn(0, 4, requires_grad=True)
    grads = backward_step_multimodule({"used": used, "images": unused}, used.sum(), None)
    assert torch.equal(grads["images"], torch.zeros(0, 4))


def test_a_missing_output_gradient_is_named():
    hidden = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"no gradient received for outputs \['language'\]"):
        backward_step_multimodule({"x": hidden}, {"language": hidden * 2}, {})
