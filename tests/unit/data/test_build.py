"""data.source / data.path validation, build_dataset, and loader batches from a file equal the synthetic ones."""

from __future__ import annotations

import pytest

from mimo.config_loading import build_dataclass
from mimo.data import FileDataset, MicrobatchLoader, SyntheticDataConfig, SyntheticMimoDataset, build_dataset
from mimo.data import save_samples
from tests.unit.data.helpers import assert_same_tree, image_audio_config


def _synthetic(num_samples: int = 10) -> SyntheticMimoDataset:
    config = SyntheticDataConfig(num_samples=num_samples, seq_length=32, seed=3)
    return SyntheticMimoDataset(config, image_audio_config())


def test_default_source_is_synthetic_without_path():
    config = SyntheticDataConfig()
    assert config.source == "synthetic" and config.path is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"source": "file"}, r"^data.source='file' needs data.path \(the samples file to read\), got data.path=None$"),
        ({"source": "file", "path": ""}, r"data.source='file' needs data.path .*got data.path=''$"),
        ({"source": "synthetic", "path": "x.pt"},
         r"^data.path='x.pt' is set but data.source='synthetic' ignores it; set data.source='file'"),
        ({"path": "x.pt"}, r"data.path='x.pt' is set but data.source='synthetic'"),
        ({"source": "disk"}, r"^data.source must be one of 'synthetic', 'file', 'conversations', got 'disk'$"),
    ],
)
def test_source_and_path_must_agree(settings, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataConfig(**settings)


def test_yaml_style_data_section_with_a_file_source(tmp_path):
    config = build_dataclass(SyntheticDataConfig, {"source": "file", "path": str(tmp_path / "s.pt"), "seed": 9})
    assert (config.source, config.path, config.seed) == ("file", str(tmp_path / "s.pt"), 9)
    with pytest.raises(ValueError, match=r"source='disk' is not one of 'synthetic', 'file'"):
        build_dataclass(SyntheticDataConfig, {"source": "disk"})
    with pytest.raises(ValueError, match=r"^data.source='file' needs data.path"):
        build_dataclass(SyntheticDataConfig, {"source": "file"})


def test_build_dataset_chooses_by_source(tmp_path):
    synthetic = build_dataset(SyntheticDataConfig(num_samples=6, seq_length=32, seed=3), image_audio_config())
    assert isinstance(synthetic, SyntheticMimoDataset) and len(synthetic) == 6
    path = save_samples([synthetic[i] for i in range(6)], tmp_path / "s.pt")
    from_file = build_dataset(SyntheticDataConfig(source="file", path=str(path)), image_audio_config())
    assert isinstance(from_file, FileDataset) and from_file.path == path and len(from_file) == 6
    assert_same_tree(from_file[4], synthetic[4])


def test_build_dataset_reports_a_missing_file_by_path(tmp_path):
    config = SyntheticDataConfig(source="file", path=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=r"missing.pt: no such samples file"):
        build_dataset(config, image_audio_config())


def test_build_dataset_rejects_a_source_assigned_after_validation():
    config = SyntheticDataConfig()
    config.source = "disk"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"data.source must be one of 'synthetic', 'file', 'conversations', got 'disk'"):
        build_dataset(config, image_audio_config())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_microbatches": 2, "dp_rank": 1, "dp_size": 2},
        {"num_microbatches": 4, "modalities": ["audio"], "include_text": False},
        {"modalities": [], "include_text": True, "consumed_samples": 7},
    ],
)
def test_loader_batches_from_a_file_equal_the_synthetic_ones(tmp_path, options):
    synthetic = _synthetic()
    dataset = FileDataset(save_samples([synthetic[i] for i in range(10)], tmp_path / "s.pt"), image_audio_config())
    settings = {"global_batch_size": 8, "num_microbatches": 1, "seed": 7, **options}
    expected_loader, actual_loader = MicrobatchLoader(synthetic, **settings), MicrobatchLoader(dataset, **settings)
    for _ in range(3):  # 24 samples: crosses epoch boundaries
        expected, actual = list(expected_loader.next_step()), list(actual_loader.next_step())
        assert len(actual) == len(expected) == settings["num_microbatches"]
        for expected_batch, actual_batch in zip(expected, actual):
            assert_same_tree(actual_batch, expected_batch)
    assert actual_loader.state_dict() == expected_loader.state_dict()
