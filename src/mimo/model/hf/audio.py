"""The encoder of a Hugging Face Whisper model, as a sliceable encoder that emits only each clip's valid tokens.

The slice reuses transformers' ``WhisperEncoderLayer`` and mirrors ``WhisperEncoder.forward``, so a clip's rows
equal ``WhisperModel.encoder(input_features).last_hidden_state`` (or ``hidden_states[feature_layer]``) on the
same zero-padded features. Parameter names are those of ``WhisperModel`` (``encoder.conv1.*``,
``encoder.layers.{i}.*``, ...), whether the folder was saved from ``WhisperModel`` or from
``WhisperForConditionalGeneration`` (which prefixes them with ``model.``).

Shape legend: N = clips, T = frames, F = mel bins, L = max_tokens, D = hidden size, B = samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from transformers import AutoConfig, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from mimo.model.compute import run_layer
from mimo.model.encoder_layers import check_hidden, check_layer_range, missing_part_error
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.tensor_parallel import encoder_layer_plan, parallelize, tp_size
from mimo.model.hf.weights import WeightFiles, empty_parameters, materialize
from mimo.model.types import EncoderOutput, check_items_per_sample, sum_per_sample

__all__ = ["HFAudioEncoder"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# ``WhisperModel`` saves ``encoder.*``; ``WhisperForConditionalGeneration`` saves ``model.encoder.*``.
_FOLDER_PREFIXES = ("", "model.")
_PROBE = "encoder.conv1.weight"


class _WhisperEncoderParts(nn.Module):
    """The parts of ``WhisperModel.encoder`` that one slice holds, under HF's attribute names."""

    def __init__(self, whisper: WhisperConfig, layers: range, *, has_embedding: bool, has_layer_norm: bool) -> None:
        super().__init__()
        width = whisper.d_model
        self.conv1 = nn.Conv1d(whisper.num_mel_bins, width, kernel_size=3, padding=1) if has_embedding else None
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1) if has_embedding else None
        self.embed_positions = nn.Embedding(whisper.max_source_positions, width) if has_embedding else None
        if self.embed_positions is not None:
            # Fixed sinusoids in HF (requires_grad False there too); materialize keeps the flag.
            self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleDict({str(index): WhisperEncoderLayer(whisper) for index in layers})
        self.layer_norm = nn.LayerNorm(width) if has_layer_norm else None


class HFAudioEncoder(nn.Module):
    """conv1/GELU/conv2/GELU + positions -> the held Whisper layers -> final layer_norm, valid rows only.

    Whisper has no attention mask: every clip is padded (with zeros here) to exactly ``max_frames`` and its
    valid tokens attend to the padded ones too, as in HF. Frames past a clip's length are zeroed, so the rows
    depend only on the valid frames. ``encoder_layerdrop`` (training-time layer skipping) is not reproduced.
    """

    aux_keys: tuple[str, ...] = ("tokens_per_clip", "items_per_sample")
    """Keys of the ``aux`` dict that ``embed`` returns and later stages need."""
    checkpoint_every: int = 0
    """Recompute the layers whose global index is a multiple of this in the backward (0: none; see
    ``mimo.model.compute``)."""

    def __init__(
        self,
        config: HFEncoderConfig,
        *,
        layers: range | None = None,
        has_embedding: bool = True,
        has_head: bool = True,
        files: WeightFiles | None = None,
    ) -> None:
        super().__init__()
        if config.input_kind != "audio":
            raise ValueError(f"HFAudioEncoder needs a Whisper folder, got model_type {config.model_type!r}")
        self.config = config
        self.layer_indices = check_layer_range(layers, config.num_layers, "hf audio encoder")
        self._has_head = has_head
        whisper = AutoConfig.from_pretrained(config.hf)
        whisper._attn_implementation = config.attn_implementation
        self._dropout = float(whisper.dropout)
        with empty_parameters():
            # HF applies the final layer_norm to last_hidden_state only: hidden_states[k < last] are raw.
            self.encoder = _WhisperEncoderParts(
                whisper,
                self.layer_indices,
                has_embedding=has_embedding,
                has_layer_norm=has_head and config.uses_last_layer,
            )
        files = WeightFiles(config.hf) if files is None else files
        prefix = _folder_prefix(files)
        materialize(self, files, source_name=lambda name: prefix + name, dtype=_DTYPES[config.dtype])

    @property
    def has_embedding(self) -> bool:
        return self.encoder.conv1 is not None

    @property
    def has_head(self) -> bool:
        # Not ``layer_norm is not None``: with an earlier feature_layer the head is empty but still owns finish.
        return self._has_head

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split each held layer's attention heads and MLP (``fc1``/``fc2``) over the 1-D ``("tp",)`` ``mesh``,
        in place (see ``mimo.model.hf.tensor_parallel``); ``WhisperAttention.num_heads`` becomes the local count,
        since its forward views keys and values with it. The convolutions, positions and layer norms stay plain
        and replicated; inputs and outputs stay plain tensors, the same on every rank of the mesh."""
        tp = tp_size(self, mesh, "hf audio encoder")
        self.config.check_tensor_parallel(tp)
        for layer in self.encoder.layers.values():
            parallelize(layer, mesh, plan=encoder_layer_plan(""), attentions=[layer.self_attn])

    def forward(self, features: Tensor, lengths: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``features [N, T, F]`` with ``lengths [N]`` valid frames into sample-major token rows."""
        hidden_NLD, aux = self.embed(features, lengths, items_per_sample)
        return self.finish(self.run_layers(hidden_NLD, aux), aux)

    def embed(self, features: Tensor, lengths: Tensor, items_per_sample: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Check and embed the clips: ``[N, L, D]`` and ``{"tokens_per_clip": [N], "items_per_sample": [B]}``."""
        encoder = self.encoder
        if encoder.conv1 is None or encoder.conv2 is None or encoder.embed_positions is None:
            raise missing_part_error("HFAudioEncoder", "has_embedding", "embed")
        self._check_inputs(features, lengths)
        check_items_per_sample(items_per_sample, features.shape[0], "audio clips")
        # [N, T, F] time-major -> [N, F, max_frames] channel-major, as Whisper's Conv1d wants.
        frames_NFT = self._pad_to_max_frames(features, lengths).transpose(1, 2).to(encoder.conv1.weight.dtype)
        hidden_NDL = F.gelu(encoder.conv2(F.gelu(encoder.conv1(frames_NFT))))
        hidden_NLD = hidden_NDL.transpose(1, 2) + encoder.embed_positions.weight
        hidden_NLD = F.dropout(hidden_NLD, p=self._dropout, training=self.training)
        tokens_N = (lengths.to(torch.long) + self.config.downsample - 1) // self.config.downsample
        return hidden_NLD, {"tokens_per_clip": tokens_N, "items_per_sample": items_per_sample.to(torch.long)}

    def run_layers(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """Run the held layers on ``[N, L, D]`` (``aux`` is unused: Whisper attends over all tokens, unmasked)."""
        del aux
        check_hidden(hidden_NLD, self.config.hidden_size, "hf audio encoder")
        if hidden_NLD.shape[0] == 0:
            return hidden_NLD  # no item in this microbatch: transformers' attention cannot reshape an empty batch
        for index, layer in self.encoder.layers.items():
            # None: no attention mask, as in HF's WhisperEncoder.
            hidden_NLD = run_layer(layer, int(index), self.checkpoint_every, hidden_NLD, None)
        return hidden_NLD

    def finish(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> EncoderOutput:
        """Final layer_norm (last layer only), then each clip's valid tokens in sample order, and row counts."""
        if not self._has_head:
            raise missing_part_error("HFAudioEncoder", "has_head", "finish")
        check_hidden(hidden_NLD, self.config.hidden_size, "hf audio encoder")
        tokens_N = aux["tokens_per_clip"]
        if hidden_NLD.shape[1] != self.config.max_tokens or tokens_N.shape != (hidden_NLD.shape[0],):
            raise ValueError(
                f"hf audio encoder expects hidden states [N, {self.config.max_tokens}, D] and tokens_per_clip [N], "
                f"got {list(hidden_NLD.shape)} and {list(tokens_N.shape)}"
            )
        if self.encoder.layer_norm is not None:
            hidden_NLD = self.encoder.layer_norm(hidden_NLD)
        positions = torch.arange(hidden_NLD.shape[1], device=hidden_NLD.device)
        valid_NL = positions[None, :] < tokens_N.to(hidden_NLD.device)[:, None]
        # Boolean indexing walks [N, L] row-major: clip by clip, each clip's valid tokens in order.
        return EncoderOutput(hidden_NLD[valid_NL], sum_per_sample(tokens_N, aux["items_per_sample"]))

    def _check_inputs(self, features: Tensor, lengths: Tensor) -> None:
        bins = self.config.num_mel_bins
        if features.ndim != 3 or features.shape[2] != bins:
            raise ValueError(f"features must have shape [N, T, {bins}] (time-major), got {list(features.shape)}")
        if lengths.ndim != 1 or lengths.shape[0] != features.shape[0] or lengths.is_floating_point():
            raise ValueError(
                f"lengths must be an integer tensor of shape [{features.shape[0]}] (one per clip), "
                f"got {lengths.dtype} of shape {list(lengths.shape)}"
            )
        too_long = lengths > self.config.max_frames
        if bool(too_long.any()):
            raise ValueError(
                f"audio clips of {lengths[too_long].tolist()} frames exceed Whisper's max_frames="
                f"{self.config.max_frames} (its conv stack takes exactly that many frames)"
            )
        bad = (lengths < 1) | (lengths > features.shape[1])
        if bool(bad.any()):
            raise ValueError(f"audio lengths {lengths[bad].tolist()} must be in [1, T={features.shape[1]}]")

    def _pad_to_max_frames(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``[N, max_frames, F]``: cut or zero-pad time to exactly max_frames, zero past each clip's length.

        Zeros, not the log-mel of silence that HF's feature extractor pads with: the data code's convention.
        """
        max_frames = self.config.max_frames
        frames = features[:, :max_frames]
        frames = F.pad(frames, (0, 0, 0, max_frames - frames.shape[1]))
        valid = torch.arange(max_frames, device=features.device)[None, :] < lengths.to(features.device)[:, None]
        # where, not multiply: NaN/inf in the padding must not leak in (NaN * 0 is NaN).
        return torch.where(valid.unsqueeze(-1), frames, torch.zeros((), dtype=frames.dtype, device=frames.device))


def _folder_prefix(files: WeightFiles) -> str:
    """What the folder puts before our parameter names ("" or "model.")."""
    for prefix in _FOLDER_PREFIXES:
        if prefix + _PROBE in files:
            return prefix
    candidates = [prefix + _PROBE for prefix in _FOLDER_PREFIXES]
    raise ValueError(f"{files.folder} has none of {candidates}: not a Whisper model's weights")
