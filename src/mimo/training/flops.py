"""Model FLOPs per step and utilisation (MFU): what the summary and TensorBoard report.

Per module and step: ``2 * parameters * tokens`` for the forward and twice that again for a backward (weight and
input gradients), the usual dense-transformer estimate; attention's sequence-squared term is left out, so MFU
is slightly underestimated for long sequences. ``tokens`` is what the module actually processed: the text
positions of the global batch for the language model, the rows an encoder saw (patches, audio frames).
"""

from __future__ import annotations

import time

import torch

__all__ = ["measure_matmul_peak", "module_flops"]


def module_flops(parameters: int, tokens: int, *, runs_backward: bool) -> float:
    """Estimated floating point operations of one module for one step."""
    return (6.0 if runs_backward else 2.0) * parameters * tokens


def measure_matmul_peak(*, size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of this process's best square matmul (the CPU peak we can actually reach; ~0.5 s)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best
