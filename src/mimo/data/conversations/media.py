"""Decode image and audio files into the tensors one encoder reads: ``MediaLoader`` and ``MediaError``.

A ``MediaLoader`` is built from one encoder config (built-in ``VisionEncoderConfig`` / ``AudioEncoderConfig``,
or an ``HFEncoderConfig``) and turns a file into one item of that encoder's kwargs (see ``mimo.data.format``):

- ``load_image(path) -> [C, H, W]`` float32, exactly ``(num_channels, image_size, image_size)``.
    * Hugging Face encoder: the folder's own image processor (``AutoImageProcessor.from_pretrained(folder)``; the
      PIL processors, no torchvision), fed ``Image.open(path).convert("RGB")`` as LLaVA does (``"L"`` for a
      one-channel tower), so grayscale and RGBA files work with every processor.
    * Built-in vision encoder (``builtin_image``): convert to ``L`` / ``RGB`` / ``RGBA`` for 1 / 3 / 4 channels,
      resize to ``image_size x image_size`` (bicubic, no crop: the aspect ratio is not kept), scale to [0, 1],
      normalize with mean 0.5 and std 0.5 (values in [-1, 1]).
- ``load_audio(path) -> [T, num_mel_bins]`` float32, time-major, ``T`` = the clip's real frames (no padding; the
  collate pads). The file is read with ``soundfile``, mixed to mono (mean of the channels) and resampled to the
  feature rate with ``scipy.signal.resample_poly`` (exact rational ratio; ``ceil(n * up / down)`` samples).
    * Hugging Face (Whisper) encoder: the folder's ``WhisperFeatureExtractor``. It pads every clip to its fixed
      ``n_samples``; the real frames are the first ``ceil(samples / hop_length)`` (the frames its own
      ``return_attention_mask`` marks valid).
    * Built-in audio encoder (``builtin_log_mel``): Whisper's log-mel recipe computed in torch, with
      ``num_mel_bins`` bins at 16 kHz, a 400-sample (25 ms) periodic Hann window and a 160-sample (10 ms) hop
      (all three can be changed in the constructor): ``torch.stft`` (centred, reflect padding at the start, the
      clip followed by zeros at the end), power spectrum, Slaney-scale mel filterbank with Slaney area
      normalization over 0 Hz .. rate / 2 (``mel_filterbank``), ``log10(max(mel, 1e-10))``, floored at the clip's
      maximum minus 8, then ``(x + 4) / 4``. The same ``ceil(samples / hop_length)`` frames are kept.
- ``frames_of(path) -> int``: the ``T`` that ``load_audio`` returns, from the file header only (``soundfile.info``:
  frame count and sample rate), so a rank that only needs the number of placeholder tokens never decodes audio.
  ``tokens_of(path)`` gives that number of tokens directly (images: ``tokens_per_image``).

Every failure with a file (missing, unreadable or corrupt, no samples, a processor output of the wrong shape, a
clip longer than the encoder takes) raises ``MediaError`` (a ``ValueError``) whose one-line message starts with
the path. ``MediaLoader.decoded`` counts the files a loader has decoded (``frames_of`` never counts).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from mimo.data.format import FEATURES, LENGTHS, PIXEL_VALUES, EncoderInputs
from mimo.model.configs import AudioEncoderConfig, EncoderConfig, VisionEncoderConfig
from mimo.model.hf.encoder_config import HFEncoderConfig

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "BUILTIN_HOP_LENGTH",
    "BUILTIN_IMAGE_MEAN",
    "BUILTIN_IMAGE_STD",
    "BUILTIN_N_FFT",
    "BUILTIN_SAMPLING_RATE",
    "MediaError",
    "MediaLoader",
    "builtin_image",
    "builtin_log_mel",
    "frames_for_samples",
    "mel_filterbank",
    "resample",
    "resampled_length",
]

BUILTIN_SAMPLING_RATE = 16000
"""Sample rate (Hz) of the built-in audio features."""
BUILTIN_N_FFT = 400
"""Window and FFT size of the built-in audio features (25 ms at 16 kHz)."""
BUILTIN_HOP_LENGTH = 160
"""Hop of the built-in audio features (10 ms at 16 kHz: 100 frames per second)."""
BUILTIN_IMAGE_MEAN = 0.5
BUILTIN_IMAGE_STD = 0.5
"""Normalization of the built-in image preprocessing (every channel): ``(x / 255 - 0.5) / 0.5``."""

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # log10 units below the clip's maximum that are kept (80 dB), as Whisper


class MediaError(ValueError):
    """A media file cannot become encoder input; the message is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the underlying library said
        super().__init__(f"{self.path}: {self.reason}")


# --- pure helpers ------------------------------------------------------------------------------------------------


def resampled_length(num_samples: int, source_rate: int, target_rate: int) -> int:
    """Samples after ``resample`` (``scipy.signal.resample_poly`` gives ``ceil(n * up / down)``)."""
    if source_rate == target_rate:
        return num_samples
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    return -(-num_samples * up // down)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Mono ``samples`` from ``source_rate`` to ``target_rate`` (polyphase, exact rational ratio), float32."""
    if source_rate == target_rate:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    divisor = math.gcd(source_rate, target_rate)
    out = resample_poly(samples, target_rate // divisor, source_rate // divisor)
    return np.asarray(out, dtype=np.float32)


def frames_for_samples(num_samples: int, hop_length: int) -> int:
    """Real feature frames of a clip of ``num_samples`` (at the feature rate): ``ceil(num_samples / hop_length)``."""
    return -(-num_samples // hop_length)


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, Whisper's): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    min_log_hz, min_log_mel, step = 1000.0, 15.0, 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-12) / min_log_hz) * step, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    min_log_hz, min_log_mel, step = 1000.0, 15.0, np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(step * (mels - min_log_mel)), freq)


def mel_filterbank(num_mel_bins: int, n_fft: int, sampling_rate: int) -> Tensor:
    """``[n_fft // 2 + 1, num_mel_bins]`` float32: triangular filters between 0 Hz and ``sampling_rate / 2``.

    Centres equally spaced on Slaney's mel scale; each triangle scaled by ``2 / (upper - lower edge in Hz)``
    (Slaney area normalization). Equal to ``transformers.audio_utils.mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")``, the bank Whisper's feature extractor uses.
    """
    fft_freqs = np.linspace(0.0, sampling_rate / 2.0, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sampling_rate / 2.0), num_mel_bins + 2)
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    slopes = hz_edges[None, :] - fft_freqs[:, None]  # [freqs, edges]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (hz_edges[2:] - hz_edges[:-2])
    return torch.from_numpy(filters.astype(np.float32))


def builtin_log_mel(
    samples: Tensor,
    *,
    num_mel_bins: int,
    sampling_rate: int = BUILTIN_SAMPLING_RATE,
    n_fft: int = BUILTIN_N_FFT,
    hop_length: int = BUILTIN_HOP_LENGTH,
    filters: Tensor | None = None,
) -> Tensor:
    """Log-mel features ``[ceil(n / hop_length), num_mel_bins]`` of mono ``samples [n]`` at ``sampling_rate``.

    Whisper's recipe in torch (see the module docstring); frames are centred at ``t * hop_length``.
    """
    if samples.ndim != 1 or samples.numel() == 0:
        raise ValueError(f"builtin_log_mel needs a non-empty 1-D signal, got shape {list(samples.shape)}")
    num_frames = frames_for_samples(samples.numel(), hop_length)
    # Zeros after the clip (as Whisper's padding to its chunk), so the end of the clip is never reflected and
    # torch.stft's reflect padding has enough samples even for a clip shorter than half a window.
    padded = torch.nn.functional.pad(samples.to(torch.float32), (0, n_fft))
    window = torch.hann_window(n_fft, dtype=torch.float32)
    stft = torch.stft(padded, n_fft, hop_length, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[:, :num_frames].abs() ** 2  # [freqs, T]
    if filters is None:
        filters = mel_filterbank(num_mel_bins, n_fft, sampling_rate)
    log_mel = torch.clamp(filters.T @ power, min=_LOG_FLOOR).log10()  # [bins, T]
    log_mel = torch.maximum(log_mel, log_mel.max() - _DYNAMIC_RANGE)
    return ((log_mel + 4.0) / 4.0).T.contiguous()


def builtin_image(image: PILImage.Image, *, image_size: int, num_channels: int) -> Tensor:
    """``[num_channels, image_size, image_size]`` float32: convert, bicubic resize, [0, 1], mean 0.5 / std 0.5."""
    from PIL import Image

    mode = _PIL_MODES[num_channels]
    resized = image.convert(mode).resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32).reshape(image_size, image_size, num_channels)
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1) / 255.0
    return ((pixels - BUILTIN_IMAGE_MEAN) / BUILTIN_IMAGE_STD).contiguous()


# --- the loader --------------------------------------------------------------------------------------------------


class MediaLoader:
    """Turns files into one encoder's inputs (see the module docstring); picklable, holds no open files.

    ``sampling_rate``, ``n_fft`` and ``hop_length`` set the built-in audio features only (an HF encoder takes
    them from its folder's feature extractor). ``decoded`` counts the files read by ``load_image``/``load_audio``
    (failed ones included); ``frames_of`` and ``tokens_of`` read headers only and do not count.
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        *,
        sampling_rate: int | None = None,
        n_fft: int | None = None,
        hop_length: int | None = None,
    ) -> None:
        if not isinstance(encoder, (VisionEncoderConfig, AudioEncoderConfig, HFEncoderConfig)):
            raise ValueError(f"MediaLoader needs an encoder config, got {type(encoder).__name__}")
        self.encoder = encoder
        self.kind: Literal["vision", "audio"] = encoder.input_kind
        self.is_hf = isinstance(encoder, HFEncoderConfig)
        self.decoded = 0
        self._processor: Any = None
        self._filters: Tensor | None = None
        builtin_audio = self.kind == "audio" and not self.is_hf
        overrides = {"sampling_rate": sampling_rate, "n_fft": n_fft, "hop_length": hop_length}
        given = [name for name, value in overrides.items() if value is not None]
        if given and not builtin_audio:
            raise ValueError(
                f"MediaLoader: {', '.join(given)} apply to the built-in audio encoder only "
                f"(this is a {'Hugging Face ' if self.is_hf else 'built-in '}{self.kind} encoder)"
            )
        for name, value in overrides.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"MediaLoader: {name} must be a positive integer, got {value!r}")
        if self.kind == "vision":
            self.image_shape = (encoder.num_channels, encoder.image_size, encoder.image_size)
            if self.is_hf:
                self._processor = self._load_image_processor()
            elif encoder.num_channels not in _PIL_MODES:
                raise ValueError(
                    f"MediaLoader: the built-in image preprocessing supports 1, 3 or 4 channels, "
                    f"got num_channels={encoder.num_channels}"
                )
        elif self.is_hf:
            self._processor = self._load_feature_extractor()
            extractor = self._processor
            self.sampling_rate = int(extractor.sampling_rate)
            self.n_fft = int(extractor.n_fft)
            self.hop_length = int(extractor.hop_length)
            # The extractor cuts every clip to its own n_samples; the encoder's conv stack takes max_frames.
            self.max_frames = min(int(encoder.max_frames), int(extractor.nb_max_frames))
        else:
            self.sampling_rate = sampling_rate or BUILTIN_SAMPLING_RATE
            self.n_fft = n_fft or BUILTIN_N_FFT
            self.hop_length = hop_length or BUILTIN_HOP_LENGTH
            self.max_frames = int(encoder.max_frames)
            self._filters = mel_filterbank(encoder.num_mel_bins, self.n_fft, self.sampling_rate)
            if bool((self._filters.sum(dim=0) == 0).any()):
                raise ValueError(
                    f"MediaLoader: {encoder.num_mel_bins} mel bins are too many for n_fft={self.n_fft} at "
                    f"{self.sampling_rate} Hz (some filters fall between FFT bins); use fewer bins or a larger n_fft"
                )

    def __repr__(self) -> str:
        source = f"hf={self.encoder.hf!r}" if self.is_hf else "built-in"  # type: ignore[union-attr]
        return f"MediaLoader({self.kind}, {source}, decoded={self.decoded})"

    # --- images --------------------------------------------------------------------------------------------------

    def load_image(self, path: str | os.PathLike[str]) -> Tensor:
        """``[C, H, W]`` float32 pixel values of one image file, as the encoder takes them."""
        self._require("vision", "load_image")
        _require_file(path)
        self.decoded += 1
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, inside the try
                channels = len(image.getbands())
                if self.is_hf:
                    converted = image.convert(_PIL_MODES.get(self.image_shape[0], "RGB"))
                    pixels = self._processor(images=converted, return_tensors="pt")["pixel_values"]
                    pixels = pixels[0] if pixels.ndim == 4 and pixels.shape[0] == 1 else pixels
                else:
                    pixels = builtin_image(image, image_size=self.image_shape[1], num_channels=self.image_shape[0])
        except UnidentifiedImageError:
            raise MediaError(path, "not an image file Pillow can read (unknown or corrupt format)") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise MediaError(path, f"cannot decode the image: {type(error).__name__}: {error}") from error
        if tuple(pixels.shape) != self.image_shape:
            raise MediaError(
                path,
                f"image with {channels} channel(s) became pixel values of shape {list(pixels.shape)}, "
                f"the encoder takes {list(self.image_shape)}",
            )
        return pixels.to(torch.float32).contiguous()

    def _load_image_processor(self) -> Any:
        from transformers import AutoImageProcessor

        folder = self.encoder.hf  # type: ignore[union-attr]
        try:
            processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"hf encoder folder {folder!r} has no usable image processor (preprocessor_config.json): {error}"
            ) from error
        # Probe once, so a processor that does not fit the tower is a config error, not an error per file.
        from PIL import Image

        probe = Image.new("RGB", (2 * self.image_shape[2] + 3, self.image_shape[1] + 5))
        pixels = processor(images=probe, return_tensors="pt")["pixel_values"]
        if tuple(pixels.shape[1:]) != self.image_shape:
            raise ValueError(
                f"the image processor of {folder!r} makes pixel values [{', '.join(map(str, pixels.shape[1:]))}], "
                f"the encoder takes {list(self.image_shape)}"
            )
        return processor

    # --- audio ---------------------------------------------------------------------------------------------------

    def load_audio(self, path: str | os.PathLike[str]) -> Tensor:
        """``[T, num_mel_bins]`` float32 features of one clip, ``T = frames_of(path)`` (no padding)."""
        self._require("audio", "load_audio")
        _require_file(path)
        self.decoded += 1
        import soundfile

        try:
            handle = soundfile.SoundFile(path)
        except Exception as error:  # libsndfile raises its own RuntimeError subclasses, and TypeError on odd files
            raise MediaError(path, f"cannot read the audio: {type(error).__name__}: {error}") from error
        with handle:
            header_frames, source_rate = int(handle.frames), int(handle.samplerate)
            num_frames = self._frames(path, header_frames, source_rate)  # too long: fail before decoding
            try:
                data = handle.read(dtype="float32", always_2d=True)
            except Exception as error:
                raise MediaError(path, f"cannot decode the audio: {type(error).__name__}: {error}") from error
        if data.shape[0] != header_frames:
            raise MediaError(
                path, f"the header says {header_frames} samples but {data.shape[0]} were decoded (truncated file?)"
            )
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        samples = resample(mono, source_rate, self.sampling_rate)
        if not np.isfinite(samples).all():
            raise MediaError(path, "the audio holds NaN or infinite samples")
        if self.is_hf:
            extractor = self._processor
            features = extractor(samples, sampling_rate=self.sampling_rate, return_tensors="np")["input_features"]
            features_TF = torch.from_numpy(np.ascontiguousarray(features[0].T[:num_frames]))
        else:
            features_TF = builtin_log_mel(
                torch.from_numpy(samples),
                num_mel_bins=self.encoder.num_mel_bins,
                sampling_rate=self.sampling_rate,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                filters=self._filters,
            )
        if features_TF.shape != (num_frames, self.encoder.num_mel_bins):  # a folder whose extractor disagrees
            raise MediaError(
                path,
                f"features of shape {list(features_TF.shape)}, expected [{num_frames}, {self.encoder.num_mel_bins}]",
            )
        return features_TF.to(torch.float32).contiguous()

    def frames_of(self, path: str | os.PathLike[str]) -> int:
        """The number of frames ``load_audio(path)`` returns, read from the header (no samples decoded)."""
        self._require("audio", "frames_of")
        _require_file(path)
        import soundfile

        try:
            info = soundfile.info(str(path))
        except Exception as error:
            raise MediaError(path, f"cannot read the audio header: {type(error).__name__}: {error}") from error
        return self._frames(path, int(info.frames), int(info.samplerate))

    def verify(self, path: str | os.PathLike[str]) -> None:
        """Check the file is one this loader can read, without decoding it: an image's structure (Pillow's
        ``verify``: chunks and checksums, no pixels), an audio clip's header and length. MediaError if not."""
        if self.kind == "audio":
            self.frames_of(path)
            return
        _require_file(path)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.verify()
        except UnidentifiedImageError:
            raise MediaError(path, "not an image file Pillow can read (unknown or corrupt format)") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise MediaError(path, f"corrupt image: {type(error).__name__}: {error}") from error

    def tokens_of(self, path: str | os.PathLike[str]) -> int:
        """Placeholder tokens this file needs: ``tokens_per_image``, or ``tokens_for_frames(frames_of(path))``."""
        if self.kind == "vision":
            _require_file(path)
            return int(self.encoder.tokens_per_image)
        return int(self.encoder.tokens_for_frames(self.frames_of(path)))  # type: ignore[union-attr]

    def _frames(self, path: str | os.PathLike[str], num_samples: int, source_rate: int) -> int:
        if source_rate <= 0:
            raise MediaError(path, f"sample rate {source_rate} is not positive")
        if num_samples <= 0:
            raise MediaError(path, "the audio has no samples")
        samples = resampled_length(num_samples, source_rate, self.sampling_rate)
        frames = frames_for_samples(samples, self.hop_length)
        if frames > self.max_frames:
            seconds = self.max_frames * self.hop_length / self.sampling_rate
            raise MediaError(
                path,
                f"clip {Path(path).name} has {frames} frames, the encoder takes at most {self.max_frames} "
                f"({num_samples / source_rate:.3f} s of audio, at most {seconds:.3f} s fit)",
            )
        return frames

    def _load_feature_extractor(self) -> Any:
        from transformers import WhisperFeatureExtractor

        folder = self.encoder.hf  # type: ignore[union-attr]
        try:
            extractor = WhisperFeatureExtractor.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"hf encoder folder {folder!r} has no usable WhisperFeatureExtractor "
                f"(preprocessor_config.json): {error}"
            ) from error
        if int(extractor.feature_size) != self.encoder.num_mel_bins:
            raise ValueError(
                f"the feature extractor of {folder!r} makes {extractor.feature_size} mel bins, "
                f"the encoder takes {self.encoder.num_mel_bins}"
            )
        return extractor

    # --- both ----------------------------------------------------------------------------------------------------

    def load(self, path: str | os.PathLike[str]) -> Tensor:
        """``load_image`` or ``load_audio``, whichever this encoder reads."""
        return self.load_image(path) if self.kind == "vision" else self.load_audio(path)

    def encoder_inputs(self, paths: list[str | os.PathLike[str]]) -> EncoderInputs:
        """One sample's items as encoder kwargs: ``{"pixel_values": [n, C, H, W]}`` or ``{"features": [n, T, F],
        "lengths": [n]}`` (zero past each clip's length, T = the longest clip here). ``n`` may be 0."""
        if self.kind == "vision":
            images = [self.load_image(path) for path in paths]
            stacked = torch.stack(images) if images else torch.zeros((0, *self.image_shape))
            return {PIXEL_VALUES: stacked}
        clips = [self.load_audio(path) for path in paths]
        lengths = torch.tensor([clip.shape[0] for clip in clips], dtype=torch.long)
        longest = int(lengths.max()) if clips else 1
        features = torch.zeros((len(clips), longest, self.encoder.num_mel_bins))
        for index, clip in enumerate(clips):
            features[index, : clip.shape[0]] = clip
        return {FEATURES: features, LENGTHS: lengths}

    def _require(self, kind: str, method: str) -> None:
        if self.kind != kind:
            article = {"audio": "an", "vision": "a"}
            raise ValueError(
                f"MediaLoader.{method} needs {article[kind]} {kind} encoder; "
                f"this loader is for {article[self.kind]} {self.kind} encoder"
            )


def _require_file(path: str | os.PathLike[str]) -> None:
    if not os.path.exists(path):
        raise MediaError(path, "no such file")
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
