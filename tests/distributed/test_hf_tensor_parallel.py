"""Tensor parallelism of the Hugging Face slices: a tp=2 slice computes what the plain slice computes.

One 2-rank gloo world checks every family: each rank builds a slice twice from the same folder, splits one
(``apply_tensor_parallel``), runs forward and backward of the same weighted loss on the same inputs through
both, and compares the outputs and every parameter's gradient (DTensor ones gathered with ``full_tensor``) to
1e-5 relative in fp32. The families: an untied Llama with an odd vocabulary (embedding and head sharded
unevenly, split into two pipeline slices), a tied Qwen2 with q/k/v biases and sliding-window layers (embedding
and head stay plain; checkpointed layers), CLIP, SigLIP (eager attention) and Whisper (whose attention reads
``num_heads``). It also checks which parameters became DTensors, so a plan that shards too much or too little
fails. ``check_tensor_parallel``'s one-line errors are checked in this process, from config.json alone.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mimo.model.hf.audio import HFAudioEncoder
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.language import HFLanguageSlice
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.hf.vision import HFVisionEncoder
from tests.distributed.launcher import run_ranks
from tests.hf_fixtures import tiny_hf_models  # noqa: F401

TP = 2
RTOL = 1e-5
ODD_VOCAB = 97
"""Not a multiple of TP: the untied embedding and head are sharded unevenly (49 + 48 rows)."""

_LAYER_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


@pytest.fixture(scope="module")
def folders(tiny_hf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # noqa: F811
    """The tiny CLIP, SigLIP and Whisper folders, an untied Llama and a tied Qwen2 (with biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 64}
    out = tmp_path_factory.mktemp("tp_models")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=ODD_VOCAB, tie_word_embeddings=False, **sizes)).save_pretrained(
        out / "llama_untied")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
                                 max_window_layers=1, **sizes)).save_pretrained(out / "qwen2_tied")
    names = ("clip", "siglip", "whisper")
    return {"llama_untied": str(out / "llama_untied"), "qwen2_tied": str(out / "qwen2_tied"),
            **{name: str(tiny_hf_models[name]) for name in names}}


# --- on each rank --------------------------------------------------------------------------------------------


def _gathered(tensor: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _relative(got: Tensor, want: Tensor, floor: float = 0.0) -> float:
    """Largest difference over the largest wanted value (at least ``floor``)."""
    return float((got - want).abs().max() / max(float(want.abs().max()), floor, 1e-12))


def _compare(plain: list[nn.Module], split: list[nn.Module], run: Callable[[list[nn.Module]], Tensor]) -> dict:
    """Forward ``run`` (its output's weighted sum is the loss) through both copies: relative errors and the
    names of the split copy's DTensor parameters (sharded ones, and the replicated biases of rowwise layers)."""
    from torch.distributed.tensor import DTensor

    outputs = []
    for modules in (plain, split):
        output = run(modules)
        weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7))
        (output * weights).sum().backward()
        outputs.append(output.detach())
    # A key bias's gradient is exactly zero (softmax ignores a shift per row): there is only rounding noise to
    # compare, so a gradient is measured against at least 1% of the largest gradient of the slices.
    floor = 0.01 * max(float(p.grad.abs().max()) for m in plain for p in m.parameters() if p.grad is not None)
    grads, dtensors = {}, []
    for stage, (a, b) in enumerate(zip(plain, split, strict=True)):
        params_b = dict(b.named_parameters())
        assert params_b.keys() == dict(a.named_parameters()).keys()
        for name, p in a.named_parameters():
            q = params_b[name]
            if isinstance(q, DTensor):
                dtensors.append(f"{stage}:{name}")
            if p.requires_grad:
                assert p.grad is not None and q.grad is not None, name
                grads[f"{stage}:{name}"] = _relative(_gathered(q.grad), p.grad, floor)
    return {"output": _relative(outputs[1], outputs[0]), "grads": grads, "dtensors": sorted(dtensors)}


def _language_cases(folders: dict[str, str], mesh: Any) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(1)
    results = {}
    # Untied Llama as two pipeline slices: the first holds the embedding, the last the head.
    config = HFLanguageConfig(hf=folders["llama_untied"])
    ids = torch.randint(0, ODD_VOCAB, (2, 10), generator=generator)
    positions = torch.arange(10).expand(2, -1)
    labels = torch.randint(0, ODD_VOCAB, (2, 10), generator=generator)

    def two_stages() -> list[nn.Module]:
        return [HFLanguageSlice(config, layers=range(0, 1), has_head=False),
                HFLanguageSlice(config, layers=range(1, 2), has_embedding=False)]

    def run_two(stages: list[nn.Module]) -> Tensor:
        first, last = stages
        hidden = first(first.embed(ids, positions), position_ids=positions)
        return last(hidden, position_ids=positions, labels=labels)

    plain, split = two_stages(), two_stages()
    for stage in split:
        stage.apply_tensor_parallel(mesh)
    results["llama_untied"] = _compare(plain, split, run_two)
    results["llama_untied"]["local_rows"] = [split[0].model.embed_tokens.weight.to_local().shape[0],
                                             split[1].lm_head.weight.to_local().shape[0]]
    results["llama_untied"]["local_heads"] = split[0].model.layers["0"].self_attn.q_proj.weight.to_local().shape[0]
    # Tied Qwen2 in one slice, layers recomputed in the backward (checkpointing through DTensor layers).
    config = HFLanguageConfig(hf=folders["qwen2_tied"])
    ids = torch.randint(0, 64, (2, 10), generator=generator)
    labels = torch.randint(0, 64, (2, 10), generator=generator)

    def one_slice() -> list[nn.Module]:
        whole = HFLanguageSlice(config)
        whole.checkpoint_every = 1
        return [whole]

    def run_one(slices: list[nn.Module]) -> Tensor:
        (whole,) = slices
        return whole(whole.embed(ids, positions), position_ids=positions, labels=labels)

    plain, split = one_slice(), one_slice()
    split[0].apply_tensor_parallel(mesh)
    results["qwen2_tied"] = _compare(plain, split, run_one)
    results["qwen2_tied"]["still_tied"] = split[0].lm_head.weight is split[0].model.embed_tokens.weight
    results["errors"] = _misuse_errors(split[0], mesh)
    return results


def _misuse_errors(applied: HFLanguageSlice, mesh: Any) -> list[str]:
    from torch.distributed.device_mesh import DeviceMesh

    errors = []
    wrong_name = DeviceMesh.from_group(dist.group.WORLD, "cpu", mesh_dim_names=("dp",))
    for module, bad_mesh in ((HFLanguageSlice(applied.config, layers=range(0, 1)), wrong_name), (applied, mesh)):
        with pytest.raises(ValueError) as error:
            module.apply_tensor_parallel(bad_mesh)
        errors.append(str(error.value))
    return errors


def _encoder_cases(folders: dict[str, str], mesh: Any) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(2)
    results = {}
    for name, attn in (("clip", "sdpa"), ("siglip", "eager")):
        config = HFEncoderConfig(hf=folders[name], attn_implementation=attn)
        pixels = torch.randn(3, *(config.num_channels, config.image_size, config.image_size), generator=generator)
        items = torch.tensor([2, 1])
        plain, split = [HFVisionEncoder(config)], [HFVisionEncoder(config)]
        split[0].apply_tensor_parallel(mesh)
        results[name] = _compare(plain, split, lambda m, p=pixels, i=items: m[0](p, i).embeddings)
    config = HFEncoderConfig(hf=folders["whisper"])
    features = torch.randn(3, config.max_frames, config.num_mel_bins, generator=generator)
    lengths = torch.tensor([config.max_frames, 7, 20])
    plain, split = [HFAudioEncoder(config)], [HFAudioEncoder(config)]
    split[0].apply_tensor_parallel(mesh)
    results["whisper"] = _compare(plain, split, lambda m: m[0](features, lengths, torch.tensor([1, 2])).embeddings)
    results["whisper"]["local_heads"] = split[0].encoder.layers["0"].self_attn.num_heads
    return results


def _tp_rank(rank: int, world_size: int, folders: dict[str, str]) -> dict[str, Any]:
    from torch.distributed.device_mesh import DeviceMesh

    del rank, world_size
    mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu", mesh_dim_names=("tp",))
    results = {**_language_cases(folders, mesh), **_encoder_cases(folders, mesh)}
    # DTensor state left for interpreter exit can abort the process (machine notes): release it first.
    del mesh
    gc.collect()
    dist.barrier()
    return results


# --- the tests -----------------------------------------------------------------------------------------------


def _layer_dtensor_names(prefix: str, layers: range, attention_out: str, mlp: dict[str, str]) -> list[str]:
    names = []
    for index in layers:
        for proj in (*_LAYER_PROJECTIONS, attention_out):
            names.append(f"{prefix}{index}.self_attn.{proj}.weight")
        names += [f"{prefix}{index}.{path}" for path in mlp]
    return names


@pytest.mark.distributed
def test_tensor_parallel_slices_match_the_plain_slices(folders: dict[str, str], tmp_path: Path) -> None:
    results = run_ranks(TP, _tp_rank, folders, tmp_path=tmp_path, timeout_s=90)
    decoder_mlp = {f"mlp.{p}.weight": "" for p in ("gate_proj", "up_proj", "down_proj")}
    for rank, result in enumerate(results):
        for case in ("llama_untied", "qwen2_tied", "clip", "siglip", "whisper"):
            got = result[case]
            assert got["output"] <= RTOL, (rank, case, got["output"])
            worst = max(got["grads"], key=got["grads"].get)
            assert got["grads"][worst] <= RTOL, (rank, case, worst, got["grads"][worst])
        llama = result["llama_untied"]
        assert llama["dtensors"] == sorted(
            ["0:model.embed_tokens.weight", "1:lm_head.weight"]
            + [f"0:{n}" for n in _layer_dtensor_names("model.layers.", range(0, 1), "o_proj", decoder_mlp)]
            + [f"1:{n}" for n in _layer_dtensor_names("model.layers.", range(1, 2), "o_proj", decoder_mlp)]
        )
        assert llama["local_rows"] == ([49, 49] if rank == 0 else [48, 48])
        assert llama["local_heads"] == 32 // TP  # 4 heads of 8 -> 2 local heads
        qwen2 = result["qwen2_tied"]
        biases = [f"0:model.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in _LAYER_PROJECTIONS]
        assert qwen2["dtensors"] == sorted(
            biases + [f"0:{n}" for n in _layer_dtensor_names("model.layers.", range(2), "o_proj", decoder_mlp)]
        )  # not the tied embedding / head
        assert qwen2["still_tied"]
        encoder_mlp = {f"mlp.{fc}.{w}": "" for fc in ("fc1", "fc2") for w in ("weight", "bias")}
        for case in ("clip", "siglip"):
            assert result[case]["dtensors"] == sorted(
                [f"0:{n}" for n in _layer_dtensor_names("encoder.layers.", range(2), "out_proj", encoder_mlp)]
                + [f"0:encoder.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in (*_LAYER_PROJECTIONS,
                                                                                          "out_proj")]
            )
        whisper_mlp = {f"{fc}.{w}": "" for fc in ("fc1", "fc2") for w in ("weight", "bias")}
        assert result["whisper"]["dtensors"] == sorted(
            [f"0:{n}" for n in _layer_dtensor_names("encoder.layers.", range(2), "out_proj", whisper_mlp)]
            # Whisper's k_proj has no bias.
            + [f"0:encoder.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in ("q_proj", "v_proj", "out_proj")]
        )
        assert result["whisper"]["local_heads"] == 1
        wrong_mesh, twice = result["errors"]
        assert "model.language: tensor parallelism needs a 1-D mesh named ('tp',)" in wrong_mesh
        assert twice == "model.language: tensor parallelism is already applied"


def _write_config(folder: Path, data: dict[str, Any]) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    return str(folder)


def test_check_tensor_parallel_names_what_tp_must_divide(tmp_path: Path) -> None:
    language = HFLanguageConfig(hf=_write_config(tmp_path / "lm", {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 36}))
    language.check_tensor_parallel(1)
    language.check_tensor_parallel(2)  # the odd vocabulary is sharded unevenly, not refused
    with pytest.raises(ValueError) as error:
        language.check_tensor_parallel(3)
    assert str(error.value) == "model.language: tp=3 does not divide num_attention_heads=4 (nor num_key_value_heads=2)"
    with pytest.raises(ValueError, match=r"^model.language: tp=4 does not divide num_key_value_heads=2$"):
        language.check_tensor_parallel(4)
    with pytest.raises(ValueError, match=r"does not divide num_attention_heads=4 \(nor num_key_value_heads=2, "
                                         r"intermediate_size=36\)$"):
        language.check_tensor_parallel(8)
    with pytest.raises(ValueError, match="tp must be a positive integer, got 0"):
        language.check_tensor_parallel(0)

    whisper = HFEncoderConfig(hf=_write_config(tmp_path / "whisper", {"model_type": "whisper"}))
    whisper.check_tensor_parallel(2)  # transformers' defaults: 6 heads, 1536 wide
    with pytest.raises(ValueError) as error:
        whisper.check_tensor_parallel(4, owner="model.modalities.audio.encoders.whisper")
    assert str(error.value) == "model.modalities.audio.encoders.whisper: tp=4 does not divide encoder_attention_heads=6"
    clip = HFEncoderConfig(hf=_write_config(tmp_path / "clip", {
        "model_type": "clip", "vision_config": {"num_attention_heads": 6, "intermediate_size": 102}}))
    with pytest.raises(ValueError) as error:
        clip.check_tensor_parallel(4)
    assert "\n" not in str(error.value)
    assert str(error.value).endswith(": tp=4 does not divide num_attention_heads=6 (nor intermediate_size=102)")


@pytest.mark.parametrize("model_type", ["siglip_vision_model", "clip", "whisper"])
def test_split_sizes_default_to_transformers_defaults(model_type: str, tmp_path: Path) -> None:
    """A config.json that omits the head count or MLP width (as Hub configs do) means transformers' default."""
    from transformers import CLIPConfig, SiglipVisionConfig, WhisperConfig

    config = HFEncoderConfig(hf=_write_config(tmp_path / model_type, {"model_type": model_type}))
    if model_type == "whisper":
        expected = WhisperConfig()
        assert (config.num_heads, config.mlp_size) == (expected.encoder_attention_heads, expected.encoder_ffn_dim)
    else:
        expected = SiglipVisionConfig() if model_type.startswith("siglip") else CLIPConfig().vision_config
        assert (config.num_heads, config.mlp_size) == (expected.num_attention_heads, expected.intermediate_size)
