"""MediaLoader: real digit images and WAVs into encoder inputs, against the HF processors called by hand."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mimo.data.conversations.media import (
    MediaError,
    MediaLoader,
    builtin_log_mel,
    mel_filterbank,
    resample,
    resampled_length,
)
from mimo.data.format import FEATURES, LENGTHS, PIXEL_VALUES
from mimo.model.configs import AudioEncoderConfig, VisionEncoderConfig
from mimo.model.hf.encoder_config import HFEncoderConfig
from tests.hf_fixtures import tiny_hf_models  # noqa: F401

soundfile = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")

RATES = (8000, 16000, 22050)
# Sample counts chosen around frame and resampling boundaries (hop 500 at 16 kHz for the tiny Whisper).
SECONDS = (0.01, 0.0313, 0.25, 0.37, 0.5, 0.731, 0.999, 1.0)


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real scans from scikit-learn's digits: an 8x8 grayscale PNG, an upscaled RGB one, an RGBA one."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    folder = tmp_path_factory.mktemp("digits")
    gray = (digits.images[7] * (255 / 16)).round().astype(np.uint8)
    other = (digits.images[42] * (255 / 16)).round().astype(np.uint8)
    paths = {"gray": folder / "gray.png", "rgb": folder / "rgb.png", "rgba": folder / "rgba.jpg.png"}
    Image.fromarray(gray, mode="L").save(paths["gray"])
    rgb = np.stack([other, 255 - other, gray], axis=-1)
    Image.fromarray(rgb, mode="RGB").resize((37, 23), Image.Resampling.NEAREST).save(paths["rgb"])
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 200)]), mode="RGBA").save(paths["rgba"])
    return paths


def _speechlike(num_samples: int, rate: int, seed: int) -> np.ndarray:
    """A loud, varying tone with noise: a clear maximum inside the clip, energy in every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    envelope = np.sin(np.pi * np.arange(num_samples) / max(num_samples, 1)) + 0.1
    tone = np.sin(2 * np.pi * (300 + 900 * t) * t) + 0.3 * np.sin(2 * np.pi * 1700 * t)
    return (0.4 * envelope * tone + 0.02 * rng.standard_normal(num_samples)).astype(np.float32)


def _write_wav(path: Path, num_samples: int, rate: int, *, channels: int = 1, seed: int = 0) -> Path:
    mono = _speechlike(num_samples, rate, seed)
    data = mono if channels == 1 else np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """WAVs at 8, 16 and 22.05 kHz, mono and stereo, from 10 ms to 1 s."""
    folder = tmp_path_factory.mktemp("wavs")
    paths = []
    for rate_index, rate in enumerate(RATES):
        for index, seconds in enumerate(SECONDS):
            num_samples = max(1, round(seconds * rate))
            channels = 2 if index % 3 == 1 else 1
            name = f"clip_{rate}_{num_samples}_{channels}ch.wav"
            paths.append(_write_wav(folder / name, num_samples, rate, channels=channels, seed=rate_index * 10 + index))
    return paths


def _hf(folder: Path) -> HFEncoderConfig:
    return HFEncoderConfig(hf=str(folder))


# --- images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_hf_image_matches_the_processor_by_hand(tiny_hf_models: dict[str, Path], digit_images, name) -> None:
    from transformers import AutoImageProcessor

    folder = tiny_hf_models[name]
    loader = MediaLoader(_hf(folder))
    processor = AutoImageProcessor.from_pretrained(folder)
    for path in digit_images.values():
        pixels = loader.load_image(path)
        expected = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
        torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    assert loader.decoded == len(digit_images)
    assert loader.tokens_of(digit_images["gray"]) == _hf(folder).tokens_per_image == 16


def test_hf_image_normalization_is_the_processors_own(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    """SigLIP maps white to +1 (mean/std 0.5); CLIP uses its own ImageNet-like mean and std."""
    white = tmp_path / "white.png"
    Image.new("RGB", (20, 20), (255, 255, 255)).save(white)
    siglip = MediaLoader(_hf(tiny_hf_models["siglip"])).load_image(white)
    torch.testing.assert_close(siglip, torch.ones(3, 16, 16))
    clip = MediaLoader(_hf(tiny_hf_models["clip"])).load_image(white)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(clip[:, 0, 0], (1 - mean) / std)


def test_hf_processor_that_does_not_fit_the_tower_is_a_config_error(
    tiny_hf_models: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import SiglipImageProcessorPil

    folder = tmp_path / "siglip_wrong_size"
    shutil.copytree(tiny_hf_models["siglip"], folder)
    SiglipImageProcessorPil(size={"height": 20, "width": 20}).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"makes pixel values \[3, 20, 20\], the encoder takes \[3, 16, 16\]"):
        MediaLoader(_hf(folder))
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="no usable image processor"):
        MediaLoader(_hf(folder))


@pytest.mark.parametrize("channels", [1, 3])
def test_builtin_image_preprocessing(digit_images, channels: int) -> None:
    loader = MediaLoader(VisionEncoderConfig(image_size=12, patch_size=4, num_channels=channels))
    for path in digit_images.values():
        pixels = loader.load_image(path)
        assert pixels.shape == (channels, 12, 12) and pixels.dtype == torch.float32
        assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    mode = "L" if channels == 1 else "RGB"
    by_hand = Image.open(digit_images["rgb"]).convert(mode).resize((12, 12), Image.Resampling.BICUBIC)
    array = np.asarray(by_hand, dtype=np.float32).reshape(12, 12, channels).transpose(2, 0, 1)
    expected = (torch.from_numpy(array.copy()) / 255 - 0.5) / 0.5
    torch.testing.assert_close(loader.load_image(digit_images["rgb"]), expected)
    gray_as = loader.load_image(digit_images["gray"])
    if channels == 3:  # a grayscale scan becomes three equal channels
        torch.testing.assert_close(gray_as[0], gray_as[2])


def test_builtin_image_channels_must_be_supported() -> None:
    with pytest.raises(ValueError, match="1, 3 or 4 channels, got num_channels=2"):
        MediaLoader(VisionEncoderConfig(num_channels=2))


def test_encoder_inputs_images(digit_images) -> None:
    loader = MediaLoader(VisionEncoderConfig(image_size=8, patch_size=4))
    inputs = loader.encoder_inputs([digit_images["gray"], digit_images["rgb"]])
    assert list(inputs) == [PIXEL_VALUES] and inputs[PIXEL_VALUES].shape == (2, 3, 8, 8)
    assert loader.encoder_inputs([])[PIXEL_VALUES].shape == (0, 3, 8, 8)


# --- audio -------------------------------------------------------------------------------------------------------


def test_hf_audio_matches_the_feature_extractor_by_hand(tiny_hf_models: dict[str, Path], wavs: list[Path]) -> None:
    from scipy.signal import resample_poly
    from transformers import WhisperFeatureExtractor

    folder = tiny_hf_models["whisper"]
    loader = MediaLoader(_hf(folder))
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    for path in wavs:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != 16000:
            divisor = math.gcd(rate, 16000)
            mono = resample_poly(mono, 16000 // divisor, rate // divisor).astype(np.float32)
        out = extractor(mono, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
        valid = int(out["attention_mask"][0].sum())  # the extractor's own count of real frames
        features = loader.load_audio(path)
        assert valid == math.ceil(len(mono) / 500) == features.shape[0] == loader.frames_of(path), path.name
        assert features.shape[1] == 16 and features.dtype == torch.float32
        torch.testing.assert_close(features, torch.from_numpy(out["input_features"][0].T[:valid]), rtol=0, atol=0)
    assert loader.decoded == len(wavs)


def test_frames_of_agrees_with_load_audio_without_decoding(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    loaders = [
        MediaLoader(_hf(tiny_hf_models["whisper"])),
        MediaLoader(AudioEncoderConfig(num_mel_bins=16, max_frames=100)),
        MediaLoader(AudioEncoderConfig(num_mel_bins=8, max_frames=40), hop_length=400, n_fft=512),
    ]
    # Every sample count from 1 up, around hop and resampling boundaries, at three rates.
    counts = {8000: [1, 2, 3, 79, 80, 81, 249, 250, 251, 2001, 7999], 22050: [1, 2, 11, 12, 13, 688, 689, 690, 16537]}
    counts[16000] = [1, 159, 160, 161, 499, 500, 501, 15999, 16000]
    for rate, sample_counts in counts.items():
        for num_samples in sample_counts:
            path = _write_wav(tmp_path / f"{rate}_{num_samples}.wav", num_samples, rate)
            for loader in loaders:
                before = loader.decoded
                frames = loader.frames_of(path)
                assert loader.decoded == before  # header only
                resampled = resampled_length(num_samples, rate, loader.sampling_rate)
                assert frames == math.ceil(resampled / loader.hop_length)
                assert loader.load_audio(path).shape[0] == frames, (loader, path.name)
                assert loader.tokens_of(path) == loader.encoder.tokens_for_frames(frames)


def test_resampling_length_is_resample_polys() -> None:
    for rate in RATES:
        for num_samples in (1, 7, 441, 1000, 22049, 22051):
            assert len(resample(np.ones(num_samples, np.float32), rate, 16000)) == resampled_length(
                num_samples, rate, 16000
            )


def test_too_long_clip_is_a_clear_error(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    loader = MediaLoader(_hf(tiny_hf_models["whisper"]))  # at most 32 frames = 1 s
    fits = _write_wav(tmp_path / "fits.wav", 16000, 16000)
    assert loader.frames_of(fits) == 32
    long = _write_wav(tmp_path / "long.wav", 11026, 11025)  # 1.00009 s -> 16001 samples -> 33 frames
    message = rf"^{long}: clip long.wav has 33 frames, the encoder takes at most 32 "
    with pytest.raises(MediaError, match=message):
        loader.frames_of(long)
    with pytest.raises(MediaError, match=message):
        loader.load_audio(long)
    builtin = MediaLoader(AudioEncoderConfig(num_mel_bins=16, max_frames=64))  # 64 x 10 ms
    with pytest.raises(MediaError, match="has 65 frames, the encoder takes at most 64"):
        builtin.frames_of(_write_wav(tmp_path / "b.wav", 64 * 160 + 1, 16000))


def test_builtin_log_mel_is_whispers_recipe(tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor

    # A 30 s chunk, so that the reference's padding never reaches the clips (its last frames reflect the chunk).
    reference = WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, n_fft=400)
    loader = MediaLoader(AudioEncoderConfig(num_mel_bins=16, max_frames=200))
    for num_samples in (1, 100, 200, 201, 4000, 16001, 31999):
        path = _write_wav(tmp_path / f"{num_samples}.wav", num_samples, 16000, seed=num_samples)
        samples = soundfile.read(path, dtype="float32")[0]
        frames = math.ceil(num_samples / 160)
        expected = reference(samples, sampling_rate=16000, return_tensors="np")["input_features"][0].T[:frames]
        features = loader.load_audio(path)
        assert features.shape == (frames, 16)
        torch.testing.assert_close(features, torch.from_numpy(expected), rtol=0, atol=1e-4)
    assert builtin_log_mel(torch.ones(320), num_mel_bins=4).shape == (2, 4)


@pytest.mark.parametrize(
    ("bins", "n_fft", "rate"), [(16, 400, 16000), (80, 400, 16000), (16, 1024, 16000), (8, 256, 8000)]
)
def test_mel_filterbank_is_slaneys(bins: int, n_fft: int, rate: int) -> None:
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=bins, min_frequency=0.0, max_frequency=rate / 2,
        sampling_rate=rate, norm="slaney", mel_scale="slaney",
    )
    torch.testing.assert_close(mel_filterbank(bins, n_fft, rate), torch.from_numpy(expected).float())


def test_builtin_audio_rejects_empty_filters_and_bad_options(tiny_hf_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="too many for n_fft=64"):
        MediaLoader(AudioEncoderConfig(num_mel_bins=40), n_fft=64)
    with pytest.raises(ValueError, match="built-in audio encoder only"):
        MediaLoader(_hf(tiny_hf_models["whisper"]), hop_length=100)
    with pytest.raises(ValueError, match="hop_length must be a positive integer"):
        MediaLoader(AudioEncoderConfig(), hop_length=0)


def test_encoder_inputs_audio_pads_with_zeros(tmp_path: Path) -> None:
    loader = MediaLoader(AudioEncoderConfig(num_mel_bins=16, max_frames=64))
    short = _write_wav(tmp_path / "short.wav", 1600, 16000)  # 10 frames
    longer = _write_wav(tmp_path / "longer.wav", 4000, 8000)  # 8000 samples at 16 kHz: 50 frames
    inputs = loader.encoder_inputs([short, longer])
    assert inputs[FEATURES].shape == (2, 50, 16) and inputs[LENGTHS].tolist() == [10, 50]
    assert inputs[LENGTHS].dtype == torch.long
    assert bool((inputs[FEATURES][0, 10:] == 0).all()) and bool((inputs[FEATURES][0, :10] != 0).any())
    empty = loader.encoder_inputs([])
    assert empty[FEATURES].shape == (0, 1, 16) and empty[LENGTHS].shape == (0,)


# --- errors, counting, pickling ----------------------------------------------------------------------------------


def test_every_file_failure_is_one_line_media_error(
    tiny_hf_models: dict[str, Path], digit_images, tmp_path: Path
) -> None:
    image_loaders = [MediaLoader(VisionEncoderConfig()), MediaLoader(_hf(tiny_hf_models["siglip"]))]
    audio_loaders = [MediaLoader(AudioEncoderConfig()), MediaLoader(_hf(tiny_hf_models["whisper"]))]
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    truncated.write_bytes((tmp_path / "f.png").read_bytes()[:300])
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"RIFF1234WAVEjunkjunk" * 3)
    empty_wav = tmp_path / "empty.wav"
    soundfile.write(empty_wav, np.zeros(0, np.float32), 16000)
    cases = [
        (image_loaders, tmp_path / "missing.png", "no such file"),
        (image_loaders, tmp_path, "not a regular file"),
        (image_loaders, garbage, "not an image file"),
        (image_loaders, truncated, "cannot decode the image"),
        (image_loaders, bad_wav, "not an image file"),
        (audio_loaders, tmp_path / "missing.wav", "no such file"),
        (audio_loaders, bad_wav, "cannot read the audio"),
        (audio_loaders, digit_images["gray"], "cannot read the audio"),
        (audio_loaders, empty_wav, "the audio has no samples"),
    ]
    for loaders, path, reason in cases:
        for loader in loaders:
            with pytest.raises(MediaError) as caught:
                loader.load(path)
            message = str(caught.value)
            assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
            assert isinstance(caught.value, ValueError) and caught.value.path == str(path)
            if loader.kind == "audio":
                with pytest.raises(MediaError, match=reason.replace("cannot read the audio", "cannot read")):
                    loader.frames_of(path)


def test_wrong_kind_of_call_is_a_value_error(digit_images) -> None:
    with pytest.raises(ValueError, match="needs an audio encoder; this loader is for a vision encoder"):
        MediaLoader(VisionEncoderConfig()).load_audio(digit_images["gray"])
    with pytest.raises(ValueError, match="needs a vision encoder"):
        MediaLoader(AudioEncoderConfig()).load_image(digit_images["gray"])


def test_decoded_counts_loads_only_and_loader_pickles(tiny_hf_models: dict[str, Path], wavs, digit_images) -> None:
    loader = MediaLoader(_hf(tiny_hf_models["whisper"]))
    for path in wavs:
        loader.frames_of(path)
        loader.tokens_of(path)
    assert loader.decoded == 0
    loader.load_audio(wavs[0])
    with pytest.raises(MediaError):
        loader.load_audio(digit_images["gray"])
    assert loader.decoded == 2
    copy = pickle.loads(pickle.dumps(loader))
    torch.testing.assert_close(copy.load_audio(wavs[3]), loader.load_audio(wavs[3]))
    images = pickle.loads(pickle.dumps(MediaLoader(_hf(tiny_hf_models["clip"]))))
    assert images.load_image(digit_images["rgb"]).shape == (3, 16, 16)
