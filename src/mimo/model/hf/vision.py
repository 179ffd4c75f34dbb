"""A SigLIP or CLIP vision tower from a Hugging Face folder, as a sliceable encoder emitting sample-major rows.

The slice reuses transformers' own embedding and layer classes, so it computes exactly what
``model(pixel_values, output_hidden_states=True).hidden_states[feature_layer]`` does. Parameter names are those
of the model ``AutoModel.from_pretrained(folder)`` builds, so the stages' state dicts together load into it:
``embeddings.*``, ``pre_layrnorm.*``, ``encoder.layers.{i}.*``, ``post_layernorm.*`` for a ``*_vision_model``
folder (transformers 5's ``SiglipVisionModel`` / ``CLIPVisionModel`` have no ``vision_model.`` level), the same
under ``vision_model.`` for a full two-tower folder (``SiglipModel`` / ``CLIPModel``).

Shape legend: N = images, L = tokens per image inside the tower (CLIP: 1 + patches), D = hidden size, B = samples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from transformers import AutoConfig, PretrainedConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipVisionEmbeddings

from mimo.model.compute import run_layer
from mimo.model.encoder_layers import check_hidden, check_layer_range, missing_part_error
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.tensor_parallel import encoder_layer_plan, parallelize, tp_size
from mimo.model.hf.weights import WeightFiles, empty_parameters, materialize
from mimo.model.types import EncoderOutput, check_items_per_sample

__all__ = ["HFVisionEncoder"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_TWO_TOWER_TYPES = ("siglip", "clip")
_NESTED = "vision_model"
"""Attribute of ``SiglipModel`` / ``CLIPModel`` that holds the vision tower."""

# In the files, a ``*_vision_model`` folder saved by transformers 5 has bare names; a full two-tower folder, one
# saved by transformers 4 and CLIPVisionModelWithProjection's put the tower under ``vision_model.``.
_FOLDER_PREFIXES = ("", f"{_NESTED}.")
_PROBE = "embeddings.patch_embedding.weight"


class HFVisionEncoder(nn.Module):
    """Patch embeddings (+ CLIP's ``pre_layrnorm``) -> the held encoder layers -> optional ``post_layernorm``,
    CLS dropped, one row per token in sample order.

    A slice holds the layers of ``layers`` (keyed by global index, as in HF), the embeddings only with
    ``has_embedding`` and the head (``post_layernorm`` when configured) only with ``has_head``. Only its own
    tensors are read from the folder (``files`` may be passed in to share one index or to inspect what was read).
    """

    aux_keys: tuple[str, ...] = ("items_per_sample",)
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
        if config.input_kind != "vision":
            raise ValueError(f"HFVisionEncoder needs a SigLIP or CLIP folder, got model_type {config.model_type!r}")
        self.config = config
        self.layer_indices = check_layer_range(layers, config.num_layers, "hf vision encoder")
        self._has_head = has_head
        self._nested = config.model_type in _TWO_TOWER_TYPES
        tower = _tower_config(config)
        is_clip = config.has_cls_token
        embeddings_class = CLIPVisionEmbeddings if is_clip else SiglipVisionEmbeddings
        layer_class = CLIPEncoderLayer if is_clip else SiglipEncoderLayer
        width, eps = tower.hidden_size, tower.layer_norm_eps
        # The parts sit on ``self`` or, for a full two-tower folder, on a ``vision_model`` child, as in HF.
        parts = nn.Module() if self._nested else self
        with empty_parameters():
            parts.embeddings = embeddings_class(tower) if has_embedding else None
            parts.pre_layrnorm = nn.LayerNorm(width, eps=eps) if has_embedding and is_clip else None
            # ModuleDicts rather than HF's SiglipEncoder/CLIPEncoder: a slice holds only some layers, under their
            # global index, and the names still read ``encoder.layers.{i}.*``.
            parts.encoder = nn.ModuleDict(
                {"layers": nn.ModuleDict({str(index): layer_class(tower) for index in self.layer_indices})}
            )
            parts.post_layernorm = nn.LayerNorm(width, eps=eps) if has_head and config.post_layernorm else None
        if self._nested:
            self.vision_model = parts
        files = WeightFiles(config.hf) if files is None else files
        ours = f"{_NESTED}." if self._nested else ""
        theirs = _folder_prefix(files)
        materialize(
            self, files, source_name=lambda name: theirs + name.removeprefix(ours), dtype=_DTYPES[config.dtype]
        )

    @property
    def tower(self) -> nn.Module:
        """The module holding ``embeddings``, ``pre_layrnorm``, ``encoder`` and ``post_layernorm`` (each may be
        None): ``self``, or ``self.vision_model`` for a full two-tower folder."""
        return self.vision_model if self._nested else self

    @property
    def has_embedding(self) -> bool:
        return self.tower.embeddings is not None

    @property
    def has_head(self) -> bool:
        # Not ``post_layernorm is not None``: the head may be empty (no post_layernorm) and still own ``finish``.
        return self._has_head

    @property
    def expected_image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.config.num_channels, self.config.image_size, self.config.image_size)

    @property
    def sequence_length(self) -> int:
        """Tokens per image inside the tower: the patches, after CLIP's class token."""
        return (self.config.image_size // self.config.patch_size) ** 2 + int(self.config.has_cls_token)

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split each held layer's attention heads and MLP over the 1-D ``("tp",)`` ``mesh``, in place (see
        ``mimo.model.hf.tensor_parallel``). Embeddings and layer norms stay plain and replicated; inputs and
        outputs stay plain tensors, the same on every rank of the mesh."""
        tp = tp_size(self, mesh, "hf vision encoder")
        self.config.check_tensor_parallel(tp)
        for layer in self.tower.encoder["layers"].values():
            parallelize(layer, mesh, plan=encoder_layer_plan("mlp."), attentions=[layer.self_attn])

    def forward(self, pixel_values: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``[N, C, H, W]`` images (in sample order) into ``[N * tokens_per_image, D]`` rows."""
        hidden_NLD, aux = self.embed(pixel_values, items_per_sample)
        return self.finish(self.run_layers(hidden_NLD, aux), aux)

    def embed(self, pixel_values: Tensor, items_per_sample: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Check the inputs and embed them: ``[N, L, D]`` and ``{"items_per_sample": [B]}``."""
        tower = self.tower
        if tower.embeddings is None:
            raise missing_part_error("HFVisionEncoder", "has_embedding", "embed")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.expected_image_shape:
            raise ValueError(
                f"pixel_values must have shape [N, {', '.join(map(str, self.expected_image_shape))}], "
                f"got {list(pixel_values.shape)}"
            )
        check_items_per_sample(items_per_sample, pixel_values.shape[0], "images")
        hidden_NLD = tower.embeddings(pixel_values)  # casts pixel_values to the weights' dtype itself
        if tower.pre_layrnorm is not None:
            hidden_NLD = tower.pre_layrnorm(hidden_NLD)
        return hidden_NLD, {"items_per_sample": items_per_sample.to(torch.long)}

    def run_layers(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """Run the held layers on ``[N, L, D]`` (``aux`` is unused: HF attends over every token, unmasked)."""
        del aux
        check_hidden(hidden_NLD, self.config.hidden_size, "hf vision encoder")
        if hidden_NLD.shape[0] == 0:
            return hidden_NLD  # no item in this microbatch: transformers' attention cannot reshape an empty batch
        for index, layer in self.tower.encoder["layers"].items():
            # None: no attention mask, as in HF's vision forward.
            hidden_NLD = run_layer(layer, int(index), self.checkpoint_every, hidden_NLD, None)
        return hidden_NLD

    def finish(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> EncoderOutput:
        """Optional post_layernorm, CLS dropped, one row per token in sample order, and per-sample row counts."""
        if not self._has_head:
            raise missing_part_error("HFVisionEncoder", "has_head", "finish")
        check_hidden(hidden_NLD, self.config.hidden_size, "hf vision encoder")
        if hidden_NLD.shape[1] != self.sequence_length:
            raise ValueError(
                f"hf vision encoder hidden states must have {self.sequence_length} tokens per image, "
                f"got shape {list(hidden_NLD.shape)}"
            )
        post_layernorm = self.tower.post_layernorm
        if post_layernorm is not None:
            hidden_NLD = post_layernorm(hidden_NLD)
        if self.config.has_cls_token and self.config.drop_cls_token:
            hidden_NLD = hidden_NLD[:, 1:]
        tokens = self.config.tokens_per_image
        embeddings = hidden_NLD.reshape(hidden_NLD.shape[0] * tokens, self.config.hidden_size)
        return EncoderOutput(embeddings, aux["items_per_sample"].to(torch.long) * tokens)


def _tower_config(config: HFEncoderConfig) -> PretrainedConfig:
    """transformers' config of the vision tower, with our attention implementation."""
    loaded = AutoConfig.from_pretrained(config.hf)
    tower = loaded.vision_config if config.model_type in _TWO_TOWER_TYPES else loaded
    tower._attn_implementation = config.attn_implementation
    return tower


def _folder_prefix(files: WeightFiles) -> str:
    """What the folder's tensor names put before the tower's own names ("" or "vision_model.")."""
    for prefix in _FOLDER_PREFIXES:
        if prefix + _PROBE in files:
            return prefix
    candidates = [prefix + _PROBE for prefix in _FOLDER_PREFIXES]
    raise ValueError(f"{files.folder} has none of {candidates}: not a SigLIP/CLIP vision tower's weights")
