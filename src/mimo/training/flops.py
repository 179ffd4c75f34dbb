"""Model FLOPs per step and utilisation (MFU): what the summary and TensorBoard report.

Per module and step: ``2 * parameters * tokens`` for the forward, the same again for the input gradients of a
backward and the same again for its weight gradients, which a frozen module on the gradient path (a frozen
language model under a trained encoder) does not compute: the usual dense-transformer estimate; attention's sequence-squared term is left out, so MFU
is slightly underestimated for long sequences. ``tokens`` is what the module actually processed: the text
positions of the global batch for the language model, the rows an encoder saw (patches, audio frames).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from mimo.model.compute import compute_dtype

__all__ = ["flops_summary", "measure_matmul_peak", "measured_peak", "module_flops"]


def module_flops(parameters: int, tokens: int, *, runs_backward: bool, trains: bool = True) -> float:
    """Estimated floating point operations of one module for one step (``trains``: it computes weight gradients)."""
    passes = (1 + (2 if trains else 1)) if runs_backward else 1  # forward, input and weight gradients
    return 2.0 * passes * parameters * tokens


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


def measured_peak(flops: Mapping[str, float], precisions: Mapping[str, str]) -> tuple[float, str]:
    """A measured matmul peak of this CPU in the precision of the module doing most of the FLOPs (bf16 matmuls
    run at another rate than fp32 ones), and where it comes from."""
    main = max(flops, key=lambda module: flops[module])
    precision = precisions[main]
    peak = measure_matmul_peak(dtype=compute_dtype(precision))
    return peak, f"a measured {precision} matmul on this CPU, the precision of {main!r}"


def flops_summary(flops: Mapping[str, float], *, steps: int, seconds: float, world_size: int,
                  peak: float | None, source: str) -> str:
    """Model FLOPs per module and step, and the utilisation of the job's devices (MFU) against ``peak`` per rank."""
    per_step = ", ".join(f"{module} {value / steps:.3g}" for module, value in flops.items())
    achieved = sum(flops.values()) / max(seconds, 1e-9)
    line = f"model FLOPs per step: {per_step}; {achieved / 1e9:.3g} GFLOP/s over {world_size} rank(s)"
    if peak:
        line += f"; MFU {achieved / (peak * world_size):.1%} of {peak / 1e9:.3g} GFLOP/s per rank ({source})"
    return line
