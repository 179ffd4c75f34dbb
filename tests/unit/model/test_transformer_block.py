"""TransformerBlock against a hand-written pre-norm attention + MLP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mimo.model import TransformerBlock

HIDDEN, HEADS = 16, 4


def _rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    eps = torch.finfo(x.dtype).eps
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _reference_block(block: TransformerBlock, x: Tensor, allowed: Tensor) -> Tensor:
    """Loop over batch rows and heads; ``allowed[b, q, k]`` says whether query q may see key k."""
    outputs = []
    head_dim = HIDDEN // HEADS
    for row, row_allowed in zip(x, allowed):
        h = _rms_norm(row, block.attention_norm.weight)
        qkv = h @ block.qkv.weight.T + block.qkv.bias
        heads = []
        for head in range(HEADS):
            # Head-major fused projection: head n's query, key and value are its K columns in that order.
            q, k, v = qkv[:, 3 * head * head_dim : 3 * (head + 1) * head_dim].split(head_dim, dim=-1)
            scores = q @ k.T / math.sqrt(head_dim)
            scores = scores.masked_fill(~row_allowed, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v)
        row = row + torch.cat(heads, dim=-1) @ block.attention_out.weight.T + block.attention_out.bias
        up, down = block.mlp[0], block.mlp[2]
        hidden = torch.nn.functional.gelu(_rms_norm(row, block.mlp_norm.weight) @ up.weight.T + up.bias)
        outputs.append(row + hidden @ down.weight.T + down.bias)
    return torch.stack(outputs)


def test_causal_block_matches_reference() -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=True)
    x = torch.randn(3, 7, HIDDEN)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril().expand(3, 7, 7)
    torch.testing.assert_close(block(x), _reference_block(block, x, allowed), rtol=1e-5, atol=1e-5)


def test_bidirectional_block_with_padding_mask_matches_reference() -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=False)
    x = torch.randn(2, 5, HIDDEN)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    allowed = (~padding)[:, None, :].expand(2, 5, 5)
    torch.testing.assert_close(block(x, padding), _reference_block(block, x, allowed), rtol=1e-5, atol=1e-5)


def test_padded_keys_do_not_influence_valid_positions() -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=False)
    x = torch.randn(1, 6, HIDDEN)
    other = x.clone()
    other[:, 4:] = torch.randn(1, 2, HIDDEN) * 100
    padding = torch.tensor([[False] * 4 + [True] * 2])
    torch.testing.assert_close(block(x, padding)[:, :4], block(other, padding)[:, :4], rtol=0, atol=1e-6)


def test_causal_block_ignores_future_tokens() -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=True)
    x = torch.randn(2, 6, HIDDEN)
    torch.testing.assert_close(block(x)[:, :3], block(x[:, :3]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_block_handles_zero_rows(causal: bool) -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=causal)
    out = block(torch.zeros(0, 5, HIDDEN), torch.zeros(0, 5, dtype=torch.bool))
    assert out.shape == (0, 5, HIDDEN)


def test_wrong_padding_mask_shape_is_rejected() -> None:
    block = TransformerBlock(HIDDEN, HEADS, 2, causal=False)
    with pytest.raises(ValueError, match=r"bool of shape \(2, 5\)"):
        block(torch.randn(2, 5, HIDDEN), torch.zeros(2, 4, dtype=torch.bool))


def test_hidden_not_divisible_by_heads_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"hidden_size \(10\).*num_heads \(4\)"):
        TransformerBlock(10, 4, 2, causal=True)


def test_a_weights_file_from_before_the_head_major_qkv_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    from mimo.model.weights_format import EXPORT_METADATA, check_qkv_layout

    tensors = {"language.layers.0.qkv.weight": torch.zeros(6, 2)}
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    save_file(tensors, str(old), metadata={"format": "mimo"})
    save_file(tensors, str(new), metadata=EXPORT_METADATA)
    check_qkv_layout(new, tensors)
    check_qkv_layout(old, ["language.layers.0.q_proj.weight"])  # no built-in block: nothing to misread
    with pytest.raises(ValueError, match=r"old.safetensors: its built-in attention weights \(qkv\) are laid out"):
        check_qkv_layout(old, tensors)
