"""``build_dataset``: the dataset a data config asks for."""

from __future__ import annotations

from torch.utils.data import Dataset

from mimo.data.files import FileDataset
from mimo.data.format import Sample
from mimo.data.synthetic import SyntheticMimoDataset
from mimo.data.synthetic_config import DATA_SOURCES, SyntheticDataConfig
from mimo.model.configs import MimoModelConfig

__all__ = ["build_dataset"]


def build_dataset(config: SyntheticDataConfig, model_config: MimoModelConfig) -> Dataset[Sample]:
    """``SyntheticMimoDataset`` for source "synthetic", ``FileDataset(config.path)`` for source "file".

    A relative ``path`` is taken from the current working directory.
    """
    if config.source == "synthetic":
        return SyntheticMimoDataset(config, model_config)
    if config.source == "file":
        if not isinstance(config.path, str) or not config.path:
            raise ValueError(f"data.source='file' needs data.path (the samples file to read), got {config.path!r}")
        return FileDataset(config.path, model_config)
    # The config validates source on construction; this catches a value assigned afterwards.
    raise ValueError(f"data.source must be one of {', '.join(map(repr, DATA_SOURCES))}, got {config.source!r}")
