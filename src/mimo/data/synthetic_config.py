"""``SyntheticDataConfig``: where samples come from (synthetic or a file) and the knobs of the synthetic task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DATA_SOURCES", "SyntheticDataConfig"]

DATA_SOURCES = ("synthetic", "file")
"""The values of ``data.source``."""


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
    """The data section of a run: sizes and randomness of ``SyntheticMimoDataset``, or a samples file.

    With ``source="file"`` only ``path`` and ``seed`` (the loader's shuffling seed) matter; the other fields
    describe the synthetic task and are ignored (the file fixes the number of samples and their seq_length).
    The model config supplies shapes and token ids.
    """

    source: Literal["synthetic", "file"] = "synthetic"
    """Where samples come from: generated (``SyntheticMimoDataset``) or read from ``path`` (``FileDataset``)."""
    path: str | None = None
    """The samples file written by ``mimo.data.save_samples``; required with source "file", unset otherwise."""

    num_samples: int = 2048
    """Length of the dataset (one epoch)."""
    seq_length: int = 48
    """Every sample is padded to this many tokens."""
    seed: int = 1234
    """Synthetic sample i depends on (seed, i) only, the class templates on seed only; also the loader's
    shuffling seed, for either source."""
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
        self._check_source()
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

    def _check_source(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(map(repr, DATA_SOURCES))}, got {self.source!r}")
        if self.source == "file" and (not isinstance(self.path, str) or not self.path):
            raise ValueError(
                f"data.source='file' needs data.path (the samples file to read), got data.path={self.path!r}"
            )
        if self.source == "synthetic" and self.path is not None:
            raise ValueError(
                f"data.path={self.path!r} is set but data.source='synthetic' ignores it; "
                f"set data.source='file' to read samples from it, or remove data.path"
            )
