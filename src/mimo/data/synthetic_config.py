"""``SyntheticDataConfig``: the knobs of the synthetic, learnable multimodal task."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyntheticDataConfig"]


def _require_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"data.{name} must be an integer >= {minimum}, got {value!r}")


def _require_float(name: str, value: object, low: float, high: float | None) -> None:
    in_range = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
    if not in_range or (high is not None and value > high):  # type: ignore[operator]
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"data.{name} must be a number {bounds}, got {value!r}")


@dataclass(kw_only=True, slots=True)
class SyntheticDataConfig:
    """Sizes and randomness of ``SyntheticMimoDataset``; the model config supplies shapes and token ids."""

    num_samples: int = 2048
    """Length of the dataset (one epoch)."""
    seq_length: int = 48
    """Every sample is padded to this many tokens."""
    seed: int = 1234
    """Sample i depends on (seed, i) only; the class templates on seed only."""
    min_text_tokens: int = 8
    """Fewest text tokens after the placeholders; the text length is drawn from [min, what fits]."""
    max_items_per_sample: int = 2
    """Items (images, clips) per modality and sample are drawn from [1, max] when present."""
    item_presence: float = 0.8
    """Probability that a sample has at least one item of a given modality."""
    num_classes: int = 4
    """Item classes; the text step is 1 + (sum of the sample's item classes) % num_classes."""
    noise_std: float = 0.1
    """Standard deviation of the noise added to each item's class template."""
    min_frames: int = 8
    """Shortest audio clip, in frames."""
    max_frames: int | None = None
    """Longest audio clip, in frames; None = the smallest max_frames of the modality's audio encoders."""

    def __post_init__(self) -> None:
        if isinstance(self.num_samples, int) and not isinstance(self.num_samples, bool) and self.num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {self.num_samples}: the dataset is empty")
        _require_int("num_samples", self.num_samples, 1)
        _require_int("seq_length", self.seq_length, 2)
        _require_int("seed", self.seed, 0)
        _require_int("min_text_tokens", self.min_text_tokens, 1)
        _require_int("max_items_per_sample", self.max_items_per_sample, 0)
        _require_float("item_presence", self.item_presence, 0.0, 1.0)
        _require_int("num_classes", self.num_classes, 1)
        _require_float("noise_std", self.noise_std, 0.0, None)
        _require_int("min_frames", self.min_frames, 1)
        if self.max_frames is not None:
            _require_int("max_frames", self.max_frames, 1)
            if self.max_frames < self.min_frames:
                raise ValueError(f"data.max_frames ({self.max_frames}) must be >= data.min_frames ({self.min_frames})")
