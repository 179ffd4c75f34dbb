"""HF encoder slices (SigLIP, CLIP, Whisper) against transformers' own forward, on tiny models saved once.

Every tiny model's parameters are perturbed before saving so that no LayerNorm is the identity and no bias is
zero: a slice that skips or swaps such a part then changes the numbers.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from mimo.model.hf import encoder_config as encoder_config_module
from mimo.model.hf.audio import HFAudioEncoder
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.encoders import build_hf_encoder
from mimo.model.hf.vision import HFVisionEncoder
from mimo.model.hf.weights import WeightFiles, empty_parameters, materialize

NUM_LAYERS = 3
WIDTH = 16
IMAGE = dict(image_size=8, patch_size=4, num_channels=3)
VISION = dict(hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=2, **IMAGE)
TEXT = dict(hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
MAX_SOURCE_POSITIONS = 10
MAX_FRAMES = 2 * MAX_SOURCE_POSITIONS
MEL = 6
WHISPER = dict(
    vocab_size=60,
    num_mel_bins=MEL,
    d_model=WIDTH,
    encoder_layers=NUM_LAYERS,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_source_positions=MAX_SOURCE_POSITIONS,
    max_target_positions=16,
    # A small vocabulary needs explicit special ids (the defaults are ~50k).
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)

# name -> (model factory, the encoder inside it, what its tensor names put before ours). Our names are those
# of AutoModel.from_pretrained(folder): a two-tower folder keeps "vision_model.", a Whisper one drops "model.".
_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[Any], nn.Module], str]] = {
    "siglip": (lambda: SiglipVisionModel(SiglipVisionConfig(**VISION)), lambda m: m, ""),
    "clip": (lambda: CLIPVisionModel(CLIPVisionConfig(**VISION)), lambda m: m, ""),
    # model_type clip_vision_model, but tensors under "vision_model." (as transformers 4 saved CLIPVisionModel).
    "clip_proj": (
        lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)),
        lambda m: m.vision_model,
        "vision_model.",
    ),
    "siglip_full": (
        lambda: SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT)),
        lambda m: m.vision_model,
        "",
    ),
    "clip_full": (
        lambda: CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT)),
        lambda m: m.vision_model,
        "",
    ),
    "whisper": (lambda: WhisperModel(WhisperConfig(**WHISPER)), lambda m: m.encoder, ""),
    "whisper_cg": (
        lambda: WhisperForConditionalGeneration(WhisperConfig(**WHISPER)),
        lambda m: m.model.encoder,
        "model.",
    ),
}
_TWO_TOWER = ("siglip_full", "clip_full")


class Saved:
    """A tiny HF model saved to ``folder``, kept in memory as the reference."""

    def __init__(self, name: str, folder: Path) -> None:
        factory, tower_of, self.prefix = _MODELS[name]
        self.name = name
        self.folder = folder
        self.model = factory().eval()
        with torch.no_grad():
            for param in self.model.parameters():
                param.add_(0.3 * torch.randn_like(param))
        self.model.save_pretrained(folder)
        self.tower = tower_of(self.model)
        self.is_audio = name.startswith("whisper")
        self.tower_prefix = "vision_model." if name in _TWO_TOWER else ""
        """What our names put before the tower's own (embeddings.*, encoder.*, ...)."""

    def config(self, **options: Any) -> HFEncoderConfig:
        return HFEncoderConfig(hf=str(self.folder), **options)

    def our_names(self) -> set[str]:
        """Every HF state-dict name a slice may hold, in our naming (the folder's prefix removed)."""
        names = {n.removeprefix(self.prefix) for n in self.model.state_dict() if n.startswith(self.prefix)}
        roots = ("encoder.",) if self.is_audio else ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
        return {n for n in names if n.startswith(tuple(self.tower_prefix + root for root in roots))}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tensors here are tiny: a second intra-op thread only adds synchronisation (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Saved]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    return {name: Saved(name, root / name) for name in _MODELS}


# --- inputs and HF references ------------------------------------------------------------------------------

ITEMS = torch.tensor([2, 0, 1])
"""Three items over three samples, one sample without any."""


def _pixels() -> Tensor:
    return torch.randn(3, 3, 8, 8)


def _clips(num_frames: int, lengths: list[int]) -> tuple[Tensor, Tensor]:
    """Time-major features with garbage past each length: a slice must zero it as the contract says."""
    return torch.randn(len(lengths), num_frames, MEL), torch.tensor(lengths)


def _vision_reference(ref: Saved, config: HFEncoderConfig, pixels: Tensor) -> Tensor:
    """HF's rows: hidden_states[feature_layer] (+ post_layernorm), CLS dropped when asked, flattened."""
    out = ref.tower(pixels, output_hidden_states=True)
    hidden = out.hidden_states[config.feature_layer]
    if config.post_layernorm:
        hidden = ref.tower.post_layernorm(hidden)
        if not config.has_cls_token:  # SigLIP's own last_hidden_state is exactly that
            torch.testing.assert_close(hidden, out.last_hidden_state, rtol=0, atol=0)
    if config.has_cls_token and config.drop_cls_token:
        hidden = hidden[:, 1:]
    return hidden.reshape(-1, WIDTH)


def _audio_reference(ref: Saved, config: HFEncoderConfig, features: Tensor, lengths: Tensor) -> Tensor:
    """HF's rows on the zero-padded features: hidden_states[feature_layer], each clip's first ceil(len/2)."""
    valid = torch.arange(features.shape[1])[None, :, None] < lengths[:, None, None]
    padded = torch.zeros(features.shape[0], MAX_FRAMES, MEL)
    kept = min(features.shape[1], MAX_FRAMES)
    padded[:, :kept] = (features * valid)[:, :kept]
    out = ref.tower(padded.transpose(1, 2), output_hidden_states=True)
    hidden = out.hidden_states[config.feature_layer]
    if config.feature_layer == -1:  # HF ties its last hidden state to the layer-normed output
        torch.testing.assert_close(hidden, out.last_hidden_state, rtol=0, atol=0)
    return torch.cat([hidden[i, : math.ceil(n / 2)] for i, n in enumerate(lengths.tolist())])


def _inputs(ref: Saved) -> dict[str, Tensor]:
    if ref.is_audio:
        features, lengths = _clips(25, [20, 7, 1])
        return {"features": features, "lengths": lengths, "items_per_sample": torch.tensor([1, 2, 0])}
    return {"pixel_values": _pixels(), "items_per_sample": ITEMS}


def _reference(ref: Saved, config: HFEncoderConfig, inputs: dict[str, Tensor]) -> Tensor:
    if ref.is_audio:
        return _audio_reference(ref, config, inputs["features"], inputs["lengths"])
    return _vision_reference(ref, config, inputs["pixel_values"])


def _chain(
    config: HFEncoderConfig, splits: list[range], files: list[WeightFiles] | None = None
) -> list[nn.Module]:
    last = len(splits) - 1
    return [
        build_hf_encoder(
            config,
            layers=layers,
            has_embedding=index == 0,
            has_head=index == last,
            files=None if files is None else files[index],
        )
        for index, layers in enumerate(splits)
    ]


def _run_chain(parts: list[Any], inputs: dict[str, Tensor]) -> Any:
    hidden, aux = parts[0].embed(**inputs)
    assert sorted(aux) == sorted(type(parts[0]).aux_keys)
    assert not any(value.is_floating_point() for value in aux.values())
    for part in parts:
        hidden = part.run_layers(hidden, aux)
    return parts[-1].finish(hidden, aux)


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


# --- config --------------------------------------------------------------------------------------------------


def test_config_module_imports_neither_torch_nor_transformers() -> None:
    tree = ast.parse(Path(encoder_config_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "math", "dataclasses", "pathlib", "typing", "mimo.model.hf.folder",
                        "mimo.model.tp_sizes"}, imported
    folder_tree = ast.parse(Path(encoder_config_module.__file__).with_name("folder.py").read_text())
    folder_imports = {n.module for n in ast.walk(folder_tree) if isinstance(n, ast.ImportFrom)}
    assert folder_imports <= {"__future__", "pathlib", "typing"}, folder_imports


@pytest.mark.parametrize(
    ("model_type", "transformers_config"),
    [
        ("siglip_vision_model", SiglipVisionConfig),
        ("siglip", lambda: SiglipConfig().vision_config),
        ("clip_vision_model", CLIPVisionConfig),
        ("clip", lambda: CLIPConfig().vision_config),
        ("whisper", WhisperConfig),
    ],
)
def test_config_defaults_equal_transformers_defaults(
    tmp_path: Path, model_type: str, transformers_config: Callable[[], Any]
) -> None:
    """A config.json that omits sizes (as Hub configs do) means transformers' defaults."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    config = HFEncoderConfig(hf=str(tmp_path))
    expected = transformers_config()
    assert config.model_type == model_type
    if model_type == "whisper":
        assert config.input_kind == "audio"
        assert (config.hidden_size, config.num_layers) == (expected.d_model, expected.encoder_layers)
        assert config.num_mel_bins == expected.num_mel_bins
        assert config.max_frames == 2 * expected.max_source_positions == 3000
    else:
        assert config.input_kind == "vision"
        assert (config.hidden_size, config.num_layers) == (expected.hidden_size, expected.num_hidden_layers)
        assert (config.image_size, config.patch_size, config.num_channels) == (
            expected.image_size,
            expected.patch_size,
            expected.num_channels,
        )


def test_config_sizes_of_the_tiny_models(saved: dict[str, Saved]) -> None:
    siglip, clip, whisper = saved["siglip_full"], saved["clip"], saved["whisper_cg"]
    assert siglip.config().tokens_per_image == 4
    assert siglip.config(drop_cls_token=False).tokens_per_image == 4  # no CLS to keep
    assert clip.config().tokens_per_image == 4
    assert clip.config(drop_cls_token=False).tokens_per_image == 5
    assert [clip.config(feature_layer=k).num_layers for k in (-1, -2, -4, 0, 1, 3)] == [3, 2, 0, 0, 1, 3]
    assert (siglip.config().hidden_size, siglip.config().model_type, siglip.config().input_kind) == (
        WIDTH,
        "siglip",
        "vision",
    )
    audio = whisper.config()
    assert (audio.input_kind, audio.hidden_size, audio.num_layers, audio.num_mel_bins) == ("audio", WIDTH, 3, MEL)
    assert (audio.max_frames, audio.max_tokens, audio.downsample) == (MAX_FRAMES, MAX_SOURCE_POSITIONS, 2)
    assert [audio.tokens_for_frames(n) for n in (1, 2, 7, MAX_FRAMES)] == [1, 1, 4, MAX_SOURCE_POSITIONS]
    for bad in (0, MAX_FRAMES + 1):
        with pytest.raises(ValueError, match=f"audio clip length {bad} must be in"):
            audio.tokens_for_frames(bad)
    # Data code tells the kinds apart with hasattr, as with the built-in configs.
    assert not hasattr(audio, "tokens_per_image") and not hasattr(clip.config(), "max_frames")


def _write(folder: Path, config: dict[str, Any]) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


NO_FOLDER = "no folder"
NO_CONFIG_JSON = "no config.json"
SIGLIP_3 = {"model_type": "siglip_vision_model", "num_hidden_layers": 3}
BAD_CONFIGS = [
    # (config.json's content or what is missing, options, error)
    (NO_FOLDER, {}, "is not a directory"),
    (NO_CONFIG_JSON, {}, r"is not a Hugging Face model folder \(no config.json\)"),
    (
        {"model_type": "llama"},
        {},
        "holds model_type 'llama'; supported: siglip_vision_model, siglip, clip_vision_model, clip, whisper",
    ),
    (
        {"model_type": "clip", "vision_config": {"num_hidden_layers": 3}},
        {"feature_layer": 4},
        r"feature_layer=4 is out of range .* \[-4, 3\]",
    ),
    (SIGLIP_3, {"feature_layer": -5}, "feature_layer=-5 is out of range"),
    (
        SIGLIP_3,
        {"feature_layer": -2, "post_layernorm": True},
        r"post_layernorm=True needs the last layer \(feature_layer -1\), got feature_layer=-2",
    ),
    ({"model_type": "whisper"}, {"post_layernorm": True}, "post_layernorm=True applies only to SigLIP/CLIP"),
    ({"model_type": "whisper"}, {"dtype": "float16"}, "dtype must be 'float32' or 'bfloat16', got 'float16'"),
]


@pytest.mark.parametrize(("content", "options", "message"), BAD_CONFIGS)
def test_config_rejects_bad_input(
    tmp_path: Path, content: str | dict[str, Any], options: dict[str, Any], message: str
) -> None:
    folder = tmp_path / "model"
    if content == NO_CONFIG_JSON:
        folder.mkdir()
    elif isinstance(content, dict):
        _write(folder, content)
    with pytest.raises(ValueError, match=message):
        HFEncoderConfig(hf=str(folder), **options)


def test_config_last_layer_by_positive_index_allows_post_layernorm(tmp_path: Path) -> None:
    config = HFEncoderConfig(hf=_write(tmp_path / "s", SIGLIP_3), feature_layer=3, post_layernorm=True)
    assert config.uses_last_layer and config.num_layers == 3


# --- whole slice == HF ---------------------------------------------------------------------------------------

VISION_CASES = [
    ("siglip", {}),
    ("siglip", {"post_layernorm": True}),
    ("siglip", {"feature_layer": -2}),
    ("siglip", {"feature_layer": 0}),
    ("clip", {}),
    ("clip", {"drop_cls_token": False}),
    ("clip", {"feature_layer": -2}),
    ("clip", {"feature_layer": -2, "drop_cls_token": False}),
    ("clip", {"post_layernorm": True}),
    ("siglip_full", {"feature_layer": -2}),
    ("clip_full", {"drop_cls_token": False}),
    ("clip_proj", {"feature_layer": -2}),
    ("clip", {"attn_implementation": "eager"}),
]


@pytest.mark.parametrize(("name", "options"), VISION_CASES)
def test_vision_slice_equals_hf(saved: dict[str, Saved], name: str, options: dict[str, Any]) -> None:
    ref = saved[name]
    config = ref.config(**options)
    encoder = build_hf_encoder(config)
    assert isinstance(encoder, HFVisionEncoder)
    pixels = _pixels()
    out = encoder(pixels, ITEMS)
    ref.model.set_attn_implementation(config.attn_implementation)  # eager and sdpa differ by ~1e-6
    try:
        expected = _reference(ref, config, {"pixel_values": pixels})
    finally:
        ref.model.set_attn_implementation("sdpa")
    assert _max_diff(out.embeddings, expected) <= 1e-6
    assert out.embeddings.shape == (3 * config.tokens_per_image, WIDTH)
    assert out.tokens_per_sample.tolist() == [2 * config.tokens_per_image, 0, config.tokens_per_image]
    assert out.tokens_per_sample.dtype == torch.long
    # The option reaches HF's attention: a config loaded from a folder says None, which HF takes as eager.
    layers = list(encoder.tower.encoder["layers"].values())
    assert {layer.self_attn.config._attn_implementation for layer in layers} <= {config.attn_implementation}


@pytest.mark.parametrize("name", ["whisper", "whisper_cg"])
@pytest.mark.parametrize("feature_layer", [-1, -2])
@pytest.mark.parametrize(
    ("num_frames", "lengths"),
    [(9, [9, 4, 1]), (MAX_FRAMES, [MAX_FRAMES, 13, 2]), (25, [20, 7, 1])],
    ids=["padded", "exact", "cut"],
)
def test_audio_slice_equals_hf(
    saved: dict[str, Saved], name: str, feature_layer: int, num_frames: int, lengths: list[int]
) -> None:
    ref = saved[name]
    config = ref.config(feature_layer=feature_layer)
    encoder = build_hf_encoder(config)
    assert isinstance(encoder, HFAudioEncoder)
    features, lengths_t = _clips(num_frames, lengths)
    out = encoder(features, lengths_t, torch.tensor([2, 0, 1]))
    expected = _audio_reference(ref, config, features, lengths_t)
    assert _max_diff(out.embeddings, expected) <= 1e-6
    tokens = [math.ceil(n / 2) for n in lengths]
    assert out.tokens_per_sample.tolist() == [tokens[0] + tokens[1], 0, tokens[2]]


def test_bfloat16_slice_is_close_to_float32(saved: dict[str, Saved]) -> None:
    ref = saved["clip"]
    encoder = build_hf_encoder(ref.config(dtype="bfloat16"))
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    pixels = _pixels()
    out = encoder(pixels, ITEMS)
    assert out.embeddings.dtype == torch.bfloat16
    expected = _vision_reference(ref, ref.config(), pixels)
    assert _max_diff(out.embeddings.float(), expected) <= 0.1 * float(expected.detach().abs().max())


# --- chains of slices, names, what was read ------------------------------------------------------------------

SPLITS = {
    "two": [range(0, 2), range(2, 3)],
    "three": [range(0, 1), range(1, 2), range(2, 3)],
    "three_empty_middle": [range(0, 1), range(1, 1), range(1, 3)],
}
CHAIN_CASES = [
    ("siglip", {"post_layernorm": True}),
    ("clip", {"drop_cls_token": False}),
    ("clip_full", {}),
    ("whisper", {}),
    ("whisper_cg", {}),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(("name", "options"), CHAIN_CASES)
def test_chain_of_slices_equals_the_whole(
    saved: dict[str, Saved], name: str, options: dict[str, Any], split: str
) -> None:
    ref = saved[name]
    config = ref.config(**options)
    inputs = _inputs(ref)
    whole = build_hf_encoder(config)(**inputs)
    out = _run_chain(_chain(config, SPLITS[split]), inputs)
    torch.testing.assert_close(out.embeddings, whole.embeddings, rtol=0, atol=0)
    assert out.tokens_per_sample.tolist() == whole.tokens_per_sample.tolist()
    assert _max_diff(out.embeddings, _reference(ref, config, inputs)) <= 1e-6


def _three_way(num_layers: int) -> list[range]:
    """First layer, middle (possibly empty), last layer."""
    return [range(0, 1), range(1, num_layers - 1), range(num_layers - 1, num_layers)]


def _expected_names(ref: Saved, config: HFEncoderConfig, layers: range, first: bool, last: bool) -> set[str]:
    """HF's names (ours: folder prefix removed) of the part a slice holds."""
    held_layers = tuple(f"encoder.layers.{i}." for i in layers)
    if ref.is_audio:
        embedding: tuple[str, ...] = ("encoder.conv1.", "encoder.conv2.", "encoder.embed_positions.")
        head: tuple[str, ...] = ("encoder.layer_norm.",) if config.uses_last_layer else ()
    else:
        embedding = ("embeddings.", "pre_layrnorm.")
        head = ("post_layernorm.",) if config.post_layernorm else ()
    wanted = held_layers + (embedding if first else ()) + (head if last else ())
    return {name for name in ref.our_names() if name.startswith(tuple(ref.tower_prefix + w for w in wanted))}


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("siglip", {"post_layernorm": True}),
        ("siglip_full", {"feature_layer": -2}),
        ("clip", {}),
        ("clip_full", {"post_layernorm": True}),
        ("clip_proj", {}),
        ("whisper", {"feature_layer": -2}),
        ("whisper_cg", {}),
    ],
)
def test_slices_hold_and_read_exactly_their_hf_tensors(
    saved: dict[str, Saved], name: str, options: dict[str, Any]
) -> None:
    ref = saved[name]
    config = ref.config(**options)
    splits = _three_way(config.num_layers)
    files = [WeightFiles(ref.folder) for _ in splits]
    parts = _chain(config, splits, files)
    union: set[str] = set()
    for index, (part, layers, read) in enumerate(zip(parts, splits, files, strict=True)):
        expected = _expected_names(ref, config, layers, first=index == 0, last=index == len(splits) - 1)
        state = part.state_dict()
        assert set(state) == expected
        assert sorted(read.opened) == sorted(ref.prefix + n for n in expected)  # its own tensors, each once
        for key, value in state.items():
            assert torch.equal(value, ref.model.state_dict()[ref.prefix + key]), key
        assert not union & expected
        union |= expected
    # Together the stages hold the HF encoder minus what the features never use (pooling head, later layers).
    unused_layers = tuple(f"encoder.layers.{i}." for i in range(config.num_layers, NUM_LAYERS))
    unused = ("head.",) + unused_layers
    unused += () if config.post_layernorm else ("post_layernorm.",)
    unused += () if config.uses_last_layer else ("encoder.layer_norm.",)
    unused = tuple(ref.tower_prefix + u for u in unused)
    assert union == {n for n in ref.our_names() if not n.startswith(unused)}


@pytest.mark.parametrize("name", _MODELS)
def test_names_are_those_of_automodel(saved: dict[str, Saved], name: str) -> None:
    """What an export loads the trained weights into: AutoModel.from_pretrained(folder)."""
    ref = saved[name]
    ours = build_hf_encoder(ref.config(post_layernorm=not ref.is_audio)).state_dict()
    auto = AutoModel.from_pretrained(ref.folder).state_dict()
    assert set(ours) <= set(auto)
    for key, value in ours.items():
        assert torch.equal(value, auto[key]), key


# --- gradients -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("siglip", {"post_layernorm": True}),
        ("clip", {"feature_layer": -2, "drop_cls_token": False}),
        ("clip_full", {}),
        ("whisper", {}),
        ("whisper_cg", {"feature_layer": -2}),
    ],
)
def test_chain_gradients_equal_hf(saved: dict[str, Saved], name: str, options: dict[str, Any]) -> None:
    ref = saved[name]
    config = ref.config(**options)
    inputs = _inputs(ref)
    parts = _chain(config, _three_way(config.num_layers))
    out = _run_chain(parts, inputs)
    weights = torch.randn_like(out.embeddings)
    ours = {n: p for part in parts for n, p in part.named_parameters() if p.requires_grad}
    our_grads = dict(zip(ours, torch.autograd.grad((out.embeddings * weights).sum(), list(ours.values())), strict=True))

    hf_params = {n: p for n, p in ref.model.named_parameters() if p.requires_grad}
    expected = _reference(ref, config, inputs)
    hf_grads = torch.autograd.grad((expected * weights).sum(), list(hf_params.values()), allow_unused=True)
    used = {n.removeprefix(ref.prefix): g for n, g in zip(hf_params, hf_grads, strict=True) if g is not None}
    assert set(our_grads) == set(used)  # the same parameters take part, frozen ones (Whisper positions) in neither
    for key, grad in our_grads.items():
        reference = used[key]
        assert float(reference.norm()) > 0, key
        assert float((grad - reference).norm()) <= 1e-5 * float(reference.norm()), key


# --- bad use of a slice --------------------------------------------------------------------------------------


def test_slice_errors(saved: dict[str, Saved]) -> None:
    clip, whisper = saved["clip"].config(), saved["whisper"].config()
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[N, 3, 8, 8\], got \[3, 3, 8, 9\]"):
        build_hf_encoder(clip)(torch.randn(3, 3, 8, 9), ITEMS)
    with pytest.raises(ValueError, match="items_per_sample"):
        build_hf_encoder(clip)(_pixels(), torch.tensor([1, 1]))
    features, lengths = _clips(25, [21, 3, 1])
    with pytest.raises(ValueError, match=r"audio clips of \[21\] frames exceed Whisper's max_frames=20"):
        build_hf_encoder(whisper)(features, lengths, ITEMS)
    with pytest.raises(ValueError, match=r"audio lengths \[10\] must be in \[1, T=9\]"):
        build_hf_encoder(whisper)(*_clips(9, [10, 3, 1]), ITEMS)
    with pytest.raises(ValueError, match=r"features must have shape \[N, T, 6\]"):
        build_hf_encoder(whisper)(torch.randn(3, MEL, 9), torch.tensor([9, 3, 1]), ITEMS)
    with pytest.raises(ValueError, match=r"contiguous sub-range of range\(2\)"):
        build_hf_encoder(saved["clip"].config(feature_layer=-2), layers=range(1, 3))
    with pytest.raises(ValueError, match="needs a Whisper folder, got model_type 'clip_vision_model'"):
        HFAudioEncoder(clip)
    with pytest.raises(ValueError, match="needs a SigLIP or CLIP folder, got model_type 'whisper'"):
        HFVisionEncoder(whisper)


@pytest.mark.parametrize("name", ["clip", "whisper"])
def test_slice_without_embedding_or_head_refuses_that_part(saved: dict[str, Saved], name: str) -> None:
    ref = saved[name]
    middle = build_hf_encoder(ref.config(), layers=range(1, 2), has_embedding=False, has_head=False)
    assert not middle.has_embedding and not middle.has_head
    with pytest.raises(ValueError, match="has_embedding=False and cannot embed"):
        middle.embed(**_inputs(ref))
    hidden, aux = build_hf_encoder(ref.config()).embed(**_inputs(ref))
    with pytest.raises(ValueError, match="has_head=False and cannot finish"):
        middle.finish(hidden, aux)


def test_materialize_keeps_a_tied_parameter_tied(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a.weight": torch.randn(3, 2)}, str(tmp_path / "model.safetensors"))
    with empty_parameters():
        model = nn.Module()
        model.a = nn.Linear(2, 3, bias=False)
        model.b = nn.Linear(2, 3, bias=False)
        model.b.weight = model.a.weight
    files = WeightFiles(tmp_path)
    materialize(model, files, source_name=lambda name: name, dtype=torch.float32)
    assert model.b.weight is model.a.weight and not model.a.weight.is_meta
    assert files.opened == ["a.weight"]
