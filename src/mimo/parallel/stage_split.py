"""Which transformer layers each pipeline stage of a module runs (pure)."""

from __future__ import annotations


def split_layers(num_layers: int, num_stages: int, layers_per_stage: list[int] | None = None) -> list[range]:
    """Consecutive layer ranges, one per stage: as configured, else as even as possible (earlier stages larger).

    A stage may hold zero layers only when asked to explicitly (e.g. a last stage with just the head).
    """
    if num_stages < 1:
        raise ValueError(f"number of pipeline stages must be >= 1, got {num_stages}")
    if layers_per_stage is None:
        if num_layers < num_stages:
            raise ValueError(
                f"cannot spread {num_layers} layers over {num_stages} pipeline stages; "
                "lower pp or give layers_per_stage explicitly"
            )
        base, extra = divmod(num_layers, num_stages)
        layers_per_stage = [base + (stage < extra) for stage in range(num_stages)]
    if len(layers_per_stage) != num_stages or any(n < 0 for n in layers_per_stage):
        raise ValueError(f"layers_per_stage={layers_per_stage} must hold {num_stages} non-negative counts")
    if sum(layers_per_stage) != num_layers:
        raise ValueError(f"layers_per_stage={layers_per_stage} sums to {sum(layers_per_stage)}, not {num_layers} layers")
    ranges, start = [], 0
    for count in layers_per_stage:
        ranges.append(range(start, start + count))
        start += count
    return ranges
