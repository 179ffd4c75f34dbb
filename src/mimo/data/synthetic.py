"""``SyntheticMimoDataset``: a cheap, deterministic and learnable multimodal task.

Each item (image or audio clip) has a class and is its class template (fixed per encoder, seeded) plus
noise. The text after the placeholders is an arithmetic sequence over the text ids whose step is
``1 + (sum of the sample's item classes) % num_classes``, so predicting the second text token needs the
items, and the rest of the text needs the first two tokens. Layout of ``input_ids``: placeholders
(modalities in config order), then text, then padding to ``seq_length``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mimo.data.format import FEATURES, LENGTHS, MODALITY_INPUTS, PIXEL_VALUES, EncoderInputs, Sample
from mimo.data.seeding import seeded_generator
from mimo.data.synthetic_config import SyntheticDataConfig
from mimo.data.text_fields import build_text_fields
from mimo.data.text_ids import text_id_range
from mimo.model.configs import EncoderConfig, MimoModelConfig

__all__ = ["SampleSpec", "SyntheticDataConfig", "SyntheticMimoDataset"]


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """Everything random about one sample except the noise: what ``__getitem__`` renders."""

    item_classes: dict[str, list[int]]
    """Per modality, the class of each item, in order."""
    clip_frames: dict[str, list[int]]
    """Per modality, valid frames of each item (empty for a modality without audio encoders)."""
    placeholder_counts: dict[str, int]
    """Per modality, rows its encoders produce = its placeholder tokens."""
    text_start: int
    """Offset of the first text token inside the text id range."""
    step: int
    num_text_tokens: int


class SyntheticMimoDataset(Dataset[Sample]):
    """Map-style dataset; sample i depends on ``(config.seed, i)`` alone, through its own generators."""

    def __init__(self, config: SyntheticDataConfig, model_config: MimoModelConfig) -> None:
        self.config, self.model_config = config, model_config
        if config.seq_length > model_config.language.max_seq_len:
            raise ValueError(
                f"data.seq_length ({config.seq_length}) exceeds language.max_seq_len "
                f"({model_config.language.max_seq_len})"
            )
        self.first_text_id, self.num_text_ids = text_id_range(model_config)
        if self.num_text_ids < config.num_classes:
            raise ValueError(
                f"the vocabulary leaves {self.num_text_ids} contiguous text ids (from {self.first_text_id}), "
                f"fewer than data.num_classes={config.num_classes}: text steps would collide"
            )
        self._frame_ranges = {
            name: self._frame_range(name, encoders)
            for name, m in model_config.modalities.items()
            if (encoders := [e for e in m.encoders.values() if e.input_kind == "audio"])
        }
        self._check_capacity()
        self._templates = {
            (name, enc_name): self._template(name, enc_name, encoder)
            for name, m in model_config.modalities.items()
            for enc_name, encoder in m.encoders.items()
        }

    def __len__(self) -> int:
        return self.config.num_samples

    def __getitem__(self, index: int) -> Sample:
        return self.load_sample(index)

    def load_sample(
        self, index: int, *, modalities: Collection[str] | None = None, include_text: bool = True
    ) -> Sample:
        """Sample ``index`` rendering only ``modalities`` (None = all) and, optionally, the text fields.

        The parts rendered are identical to those of ``dataset[index]``: a text-only rank does not pay for images.
        """
        spec = self.spec(index)
        selected = list(self.model_config.modalities) if modalities is None else list(modalities)
        unknown = sorted(set(selected) - set(self.model_config.modalities))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; the model has {list(self.model_config.modalities)}")
        sample: Sample = {}
        if include_text:
            sample.update(build_text_fields(self.tokens(spec), self.config.seq_length, self._placeholder_ids()))
        sample[MODALITY_INPUTS] = {
            name: {
                enc_name: self._render(index, name, enc_name, encoder, spec)
                for enc_name, encoder in modality.encoders.items()
            }
            for name, modality in self.model_config.modalities.items()
            if name in selected
        }
        return sample

    def spec(self, index: int) -> SampleSpec:
        """Draw the classes, clip lengths and text of sample ``index`` from its own generator."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)} samples")
        cfg = self.config
        gen = seeded_generator("sample", cfg.seed, index)
        classes: dict[str, list[int]] = {}
        frames: dict[str, list[int]] = {}
        for name in self.model_config.modalities:
            present = torch.rand((), generator=gen).item() < cfg.item_presence
            count = _randint(gen, 1, cfg.max_items_per_sample) if present and cfg.max_items_per_sample else 0
            classes[name] = torch.randint(0, cfg.num_classes, (count,), generator=gen).tolist()
            frames[name] = []
            if name in self._frame_ranges:
                low, high = self._frame_ranges[name]
                frames[name] = torch.randint(low, high + 1, (count,), generator=gen).tolist()
        counts = {name: self._rows(name, classes[name], frames[name]) for name in classes}
        room = cfg.seq_length - sum(counts.values())
        num_text = _randint(gen, cfg.min_text_tokens, room)
        start = _randint(gen, 0, self.num_text_ids - 1)
        step = 1 + sum(sum(c) for c in classes.values()) % cfg.num_classes
        return SampleSpec(classes, frames, counts, start, step, num_text)

    def tokens(self, spec: SampleSpec) -> Tensor:
        """The unpadded token sequence: placeholders in modality order, then the arithmetic text."""
        offsets = (spec.text_start + spec.step * torch.arange(spec.num_text_tokens)) % self.num_text_ids
        placeholders = [
            torch.full((spec.placeholder_counts[name],), modality.token_id, dtype=torch.long)
            for name, modality in self.model_config.modalities.items()
        ]
        return torch.cat([*placeholders, self.first_text_id + offsets])

    def _placeholder_ids(self) -> list[int]:
        return [m.token_id for m in self.model_config.modalities.values()]

    def _rows(self, name: str, classes: list[int], frames: list[int]) -> int:
        rows = 0
        for encoder in self.model_config.modalities[name].encoders.values():
            if encoder.input_kind == "vision":
                rows += encoder.tokens_per_image * len(classes)
            else:
                rows += sum(encoder.tokens_for_frames(n) for n in frames)
        return rows

    def _frame_range(self, name: str, encoders: list[EncoderConfig]) -> tuple[int, int]:
        high = min(e.max_frames for e in encoders)
        if self.config.max_frames is not None:
            high = min(high, self.config.max_frames)
        if self.config.min_frames > high:
            raise ValueError(
                f"modality {name!r}: data.min_frames ({self.config.min_frames}) exceeds the longest allowed clip "
                f"({high} frames = min of its encoders' max_frames and data.max_frames)"
            )
        return self.config.min_frames, high

    def _check_capacity(self) -> None:
        cfg = self.config
        most = cfg.max_items_per_sample
        worst = {
            name: self._rows(name, [0] * most, [self._frame_ranges.get(name, (1, 1))[1]] * most)
            for name in self.model_config.modalities
        }
        needed = sum(worst.values()) + cfg.min_text_tokens
        if needed > cfg.seq_length:
            raise ValueError(
                f"data.seq_length ({cfg.seq_length}) cannot fit max_items_per_sample={most} items of every modality "
                f"(placeholder tokens {worst}, {sum(worst.values())} in all) plus min_text_tokens="
                f"{cfg.min_text_tokens}: {needed} tokens needed"
            )

    def _template(self, name: str, enc_name: str, encoder: EncoderConfig) -> Tensor:
        gen = seeded_generator("template", self.config.seed, name, enc_name)
        if encoder.input_kind == "vision":
            shape = (encoder.num_channels, encoder.image_size, encoder.image_size)
        else:
            shape = (self._frame_ranges[name][1], encoder.num_mel_bins)
        return torch.randn((self.config.num_classes, *shape), generator=gen)

    def _render(self, index: int, name: str, enc_name: str, encoder: EncoderConfig, spec: SampleSpec) -> EncoderInputs:
        """One encoder's inputs: class templates plus noise from a generator of its own (seed, index, encoder)."""
        gen = seeded_generator("noise", self.config.seed, index, name, enc_name)
        classes = torch.tensor(spec.item_classes[name], dtype=torch.long)
        if encoder.input_kind == "vision":
            base = self._templates[name, enc_name][classes]
            return {PIXEL_VALUES: base + self.config.noise_std * torch.randn(base.shape, generator=gen)}
        lengths = torch.tensor(spec.clip_frames[name], dtype=torch.long)
        longest = int(lengths.max()) if lengths.numel() else 0
        base = self._templates[name, enc_name][classes, :longest]
        noisy = base + self.config.noise_std * torch.randn(base.shape, generator=gen)
        valid = torch.arange(longest)[None, :] < lengths[:, None]
        return {FEATURES: noisy * valid[..., None], LENGTHS: lengths}


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=gen).item())
