"""The transformer block shared by the language model and the built-in encoders.

Shape legend: B = batch rows, S = sequence length, D = hidden size, N = heads, K = head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, fp32, no dropout.

    The fused ``qkv`` projection is head-major, as Megatron's: its output rows are ``[q_0 k_0 v_0 q_1 k_1 v_1
    ...]`` (``K`` rows each, one triple per head), so splitting them into ``tp`` contiguous parts gives each
    tensor-parallel rank whole heads with their own queries, keys and values (``tensor_parallel_plan``). The
    forward reads the head count off the projection's output, so it runs unchanged on a rank's local heads.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: int, *, causal: bool) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.attention_norm = nn.RMSNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.mlp_norm = nn.RMSNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
        )

    def forward(self, x_BSD: Tensor, key_padding_mask: Tensor | None = None, segment_ids: Tensor | None = None) -> Tensor:
        """Run the block on ``[B, S, D]``.

        ``key_padding_mask`` is ``[B, S]`` bool, True where the position is padding (PyTorch's convention):
        padded keys get no attention weight, so they never influence any other position. ``segment_ids``
        ``[B, S]`` (packed rows) keeps attention inside each sequence of a row.
        """
        x_BSD = x_BSD + self._attention(self.attention_norm(x_BSD), key_padding_mask, segment_ids)
        return x_BSD + self.mlp(self.mlp_norm(x_BSD))

    def _attention(self, x_BSD: Tensor, key_padding_mask: Tensor | None, segment_ids: Tensor | None) -> Tensor:
        batch, seq, _ = x_BSD.shape
        qkv = self.qkv(x_BSD)
        heads = qkv.shape[-1] // (3 * self.head_dim)  # all of them, or this tensor-parallel rank's share
        q_BNSK, k_BNSK, v_BNSK = (t.transpose(1, 2) for t in qkv.view(batch, seq, heads, 3, self.head_dim).unbind(3))
        if key_padding_mask is None and segment_ids is None:
            out_BNSK = F.scaled_dot_product_attention(q_BNSK, k_BNSK, v_BNSK, is_causal=self.causal)
        else:
            padding = key_padding_mask if key_padding_mask is not None else torch.zeros(
                batch, seq, dtype=torch.bool, device=x_BSD.device
            )
            allowed = self._attention_mask(padding, batch, seq)
            if segment_ids is not None:
                allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
            out_BNSK = F.scaled_dot_product_attention(q_BNSK, k_BNSK, v_BNSK, attn_mask=allowed)
        return self.attention_out(out_BNSK.transpose(1, 2).reshape(batch, seq, heads * self.head_dim))

    def _attention_mask(self, key_padding_mask: Tensor, batch: int, seq: int) -> Tensor:
        """Boolean ``[B, 1, S, S]`` mask, True where a query may attend to a key."""
        if key_padding_mask.shape != (batch, seq) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be bool of shape {(batch, seq)}, got {key_padding_mask.dtype} "
                f"{tuple(key_padding_mask.shape)}"
            )
        allowed = (~key_padding_mask)[:, None, None, :]
        if self.causal:
            causal = torch.ones(seq, seq, dtype=torch.bool, device=key_padding_mask.device).tril()
            allowed = allowed & causal
        return allowed
