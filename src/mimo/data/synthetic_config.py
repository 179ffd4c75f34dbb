"""``SyntheticDataConfig``: where samples come from (synthetic, a samples file, or conversation records), the
knobs of the synthetic task, and how conversations are cut, packed, loaded and validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DATA_SOURCES", "SyntheticDataConfig", "ValidationConfig"]

DATA_SOURCES = ("synthetic", "file", "conversations")
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
class ValidationConfig:
    """Held-out samples: a second records file, or a fraction of the training records set aside."""

    path: str | None = None
    """Records file (same format as data.path); media paths relative to data.root."""
    fraction: float | None = None
    """Instead of a path: this share of data.path's records, chosen by data.seed, never trained on."""
    every_steps: int = 0
    """Validation loss every N optimizer steps (0: only at the end of the run)."""
    max_samples: int | None = None
    """Evaluate at most this many held-out samples (None: all of them)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.fraction is None):
            raise ValueError(
                f"data.validation needs exactly one of path and fraction, got path={self.path!r}, "
                f"fraction={self.fraction!r}"
            )
        if self.fraction is not None:
            _require_float("validation.fraction", self.fraction, 0.0, 1.0)
            if not 0.0 < self.fraction < 1.0:
                raise ValueError(f"data.validation.fraction must be in (0, 1), got {self.fraction!r}")
        _require_int("validation.every_steps", self.every_steps, 0)
        if self.max_samples is not None:
            _require_int("validation.max_samples", self.max_samples, 1)


@dataclass(kw_only=True, slots=True)
class SyntheticDataConfig:
    """The data section of a run: sizes and randomness of ``SyntheticMimoDataset``, or a samples file.

    With ``source="file"`` only ``path`` and ``seed`` (the loader's shuffling seed) matter; the other fields
    describe the synthetic task and are ignored (the file fixes the number of samples and their seq_length).
    The model config supplies shapes and token ids.
    """

    source: Literal["synthetic", "file", "conversations"] = "synthetic"
    """Where samples come from: generated (``SyntheticMimoDataset``), read from ``path`` (``FileDataset``), or
    conversation records (LLaVA-style JSON/JSONL) tokenized with the language model's chat template."""
    path: str | None = None
    """The samples file written by ``mimo.data.save_samples`` (source "file") or the records file (source
    "conversations"); unset for "synthetic"."""
    root: str | None = None
    """Conversations: the folder media paths are relative to (default: the records file's folder)."""
    max_seq_length: int | None = None
    """Conversations: every sample is padded to this many tokens; a longer one is cut or dropped (``overlong``)."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Conversations: a sample longer than max_seq_length is cut after its last assistant turn that fits (never
    inside a turn or a media span); with none that fits, or with "drop", it is left out and counted."""
    on_bad_sample: Literal["error", "skip"] = "error"
    """Conversations: a broken record stops the run naming it ("error"), or is left out and counted ("skip")."""
    packing: bool = False
    """Conversations: put several samples in one row (in order, as many as fit), each with its own position ids
    and attention kept inside it, so training computes what it would unpacked, with less padding."""
    num_workers: int = 0
    """Loader worker processes that prepare batches ahead of the step (0: in the training process)."""
    prefetch_factor: int = 2
    """Microbatches each worker prepares ahead."""
    validation: ValidationConfig | None = None
    """Held-out loss, logged next to the training loss."""

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
        _require_int("num_workers", self.num_workers, 0)
        _require_int("prefetch_factor", self.prefetch_factor, 1)
        if self.max_seq_length is not None:
            _require_int("max_seq_length", self.max_seq_length, 2)
        if self.max_frames is not None:
            _require_int("max_frames", self.max_frames, 1)
            if self.max_frames < self.min_frames:
                raise ValueError(f"data.max_frames ({self.max_frames}) must be >= data.min_frames ({self.min_frames})")

    def _check_source(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(map(repr, DATA_SOURCES))}, got {self.source!r}")
        if self.source in ("file", "conversations") and (not isinstance(self.path, str) or not self.path):
            what = "the samples file to read" if self.source == "file" else "the conversation records, JSON or JSONL"
            raise ValueError(f"data.source={self.source!r} needs data.path ({what}), got data.path={self.path!r}")
        if self.source == "conversations" and self.max_seq_length is None:
            raise ValueError("data.source='conversations' needs data.max_seq_length (tokens per padded sample)")
        conversation_only = {"root": self.root, "max_seq_length": self.max_seq_length, "validation": self.validation}
        for key, value in conversation_only.items():
            if value is not None and self.source != "conversations":
                raise ValueError(f"data.{key} applies to data.source='conversations' only, got source={self.source!r}")
        if self.source == "synthetic" and self.path is not None:
            raise ValueError(
                f"data.path={self.path!r} is set but data.source='synthetic' ignores it; "
                f"set data.source='file' to read samples from it, or remove data.path"
            )
