"""Hugging Face models from the command line, with tiny random folders: ``mimo hf tiny``, training with
``--export-hf``, ``mimo export --hf``, ``--init-from`` an export folder, and clean errors on bad input.

One pipelined run (images on rank 0, the tiny Llama pp=2 on ranks 1-2, 3 steps, checkpoint at step 3) is shared by
the module; every exported tensor is compared with the checkpoint consolidated by ``mimo export --out`` (the
layout-free safetensors format that other tests pin down), read back through transformers' own ``from_pretrained``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mimo.export import load_safetensors
from tests.e2e.test_bad_paths import assert_one_clear_error
from tests.e2e.test_cli import ROOT, metrics, mimo

pytestmark = pytest.mark.e2e

RECIPE = "configs/tiny_hf_vlm.yaml"
LANGUAGE = "language."
SIGLIP = "modalities.images.encoders.siglip."
PROJECTION = "modalities.images.projection."
STEPS = 3
# One process, nothing moves: the run's export is its starting point.
FROZEN_SGD = ["--set", "optim.default={name: sgd, lr: 0.0}", "--set", "optim.lr_schedule={decay: constant}"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # the subprocesses inherit it: nothing may wait on a hub
        yield


def train_args(models: Path, *more: str) -> list[str]:
    return ["train", "--config", RECIPE, "--set", f"model.language.hf={models / 'language'}",
            "--set", f"model.modalities.images.encoders.siglip.hf={models / 'siglip'}",
            "--set", "train.progress=false", *more]


@dataclass
class TinyRun:
    models: Path
    run_dir: Path
    exported: Path
    """``--export-hf`` of the training run."""
    from_checkpoint: Path
    """``mimo export --checkpoint ... --hf``."""
    consolidated: dict[str, torch.Tensor]
    """``mimo export --checkpoint ... --out``: the trained weights under mimo names."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, offline) -> TinyRun:
    root = tmp_path_factory.mktemp("hf_cli")
    made = mimo("hf", "tiny", "--out", str(root / "models"), timeout=120)
    assert made.returncode == 0, made.stderr
    assert {line.split(":")[0] for line in made.stdout.splitlines()} >= {"language", "siglip", "clip", "whisper"}
    run = mimo(*train_args(root / "models", "--nproc", "3", "--set", f"train.steps={STEPS}",
                           "--set", f"checkpoint.every_steps={STEPS}", "--run-dir", str(root / "run"),
                           "--export-hf", str(root / "out")), timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [row["step"] for row in metrics(root / "run")] == list(range(1, STEPS + 1))
    checkpoints = str(root / "run" / "checkpoints")
    for args in (["--hf", str(root / "out2")], ["--out", str(root / "checkpoint.safetensors")]):
        exported = mimo("export", "--checkpoint", checkpoints, *args, timeout=120)
        assert exported.returncode == 0, exported.stderr
    return TinyRun(root / "models", root / "run", root / "out", root / "out2",
                   load_safetensors(root / "checkpoint.safetensors"))


def test_export_hf_folders_load_with_transformers_and_hold_the_trained_weights(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel

    out, trained = tiny_run.exported, tiny_run.consolidated
    manifest = json.loads((out / "mimo_export.json").read_text())
    assert manifest["modules"] == {LANGUAGE: "language", SIGLIP: "images.siglip"}
    placeholder_id = manifest["placeholders"]["images"]["id"]
    assert manifest["placeholders"]["images"]["token"] == "<image>"

    source_tokenizer = AutoTokenizer.from_pretrained(tiny_run.models / "language")
    tokenizer = AutoTokenizer.from_pretrained(out / "language")
    assert placeholder_id == len(source_tokenizer), "the tiny tokenizer has no <image>: it is added after the last id"
    assert tokenizer("a <image> b")["input_ids"].count(placeholder_id) == 1
    assert tokenizer.convert_ids_to_tokens(placeholder_id) == "<image>" and len(tokenizer) == placeholder_id + 1
    assert tokenizer.chat_template == source_tokenizer.chat_template

    lm = AutoModelForCausalLM.from_pretrained(out / "language", dtype=torch.float32)
    assert lm.config.vocab_size == placeholder_id + 1 and lm.config.tie_word_embeddings
    siglip = SiglipVisionModel.from_pretrained(out / "images.siglip", dtype=torch.float32)
    projections = load_file(str(out / "mimo_modules.safetensors"))
    loaded = {**{LANGUAGE + n: t for n, t in lm.state_dict().items()},
              **{SIGLIP + n: t for n, t in siglip.state_dict().items()}, **projections}
    assert set(projections) == {n for n in trained if n.startswith(PROJECTION)} and projections
    missing = sorted(set(trained) - set(loaded))
    assert not missing, f"the export lacks {missing}"
    differ = [name for name in trained if not torch.equal(loaded[name], trained[name])]
    assert not differ, f"exported tensors differ from the checkpoint's: {differ}"

    # Not a vacuous match: training moved the weights away from the tiny source models.
    source_lm = AutoModelForCausalLM.from_pretrained(tiny_run.models / "language", dtype=torch.float32)
    source_embedding = source_lm.get_input_embeddings().weight
    assert not torch.equal(lm.get_input_embeddings().weight[:placeholder_id], source_embedding)
    source_siglip = SiglipVisionModel.from_pretrained(tiny_run.models / "siglip", dtype=torch.float32)
    name = "embeddings.patch_embedding.weight"
    assert not torch.equal(siglip.state_dict()[name], source_siglip.state_dict()[name])
    # SigLIP's pooling head is never used for patch features: the source's, copied so the folder is complete.
    heads = [n for n in source_siglip.state_dict() if n.startswith("head.")]
    assert heads and all(torch.equal(siglip.state_dict()[n], source_siglip.state_dict()[n]) for n in heads)


def _tensor_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*.safetensors"))


def test_export_of_the_checkpoint_equals_the_run_export(tiny_run):
    run_export, checkpoint_export = tiny_run.exported, tiny_run.from_checkpoint
    files = _tensor_files(run_export)
    assert [str(f) for f in files] == ["images.siglip/model.safetensors", "language/model.safetensors",
                                       "mimo_modules.safetensors"]
    assert _tensor_files(checkpoint_export) == files
    for file in files:
        a, b = load_file(str(run_export / file)), load_file(str(checkpoint_export / file))
        assert sorted(a) == sorted(b), file
        differ = [name for name in a if not torch.equal(a[name], b[name])]
        assert not differ, f"{file}: {differ}"
    for same in ("mimo_export.json", "language/tokenizer.json", "language/tokenizer_config.json",
                 "language/config.json", "images.siglip/config.json", "images.siglip/preprocessor_config.json"):
        assert (run_export / same).read_text() == (checkpoint_export / same).read_text(), same


def _first_batch_loss(config_args: list[str], weights: dict[str, torch.Tensor] | None) -> float:
    """The loss of the run's first global batch for ``weights`` (None: the model mimo builds from the folders)."""
    from mimo.config import load_config
    from mimo.data import LOSS_MASK, MicrobatchLoader, SyntheticMimoDataset, collate
    from mimo.model import MimoModel

    overrides = [value for flag, value in zip(config_args, config_args[1:]) if flag == "--set"]
    cfg = load_config(ROOT / RECIPE, overrides)
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    if weights is not None:
        missing = model.load_state_dict(weights, strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    (indices,) = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                                  seed=cfg.data.seed).step_indices()
    batch = collate([dataset[i] for i in indices])
    with torch.no_grad():
        mask = batch[LOSS_MASK]
        return float((model(**batch) * mask).sum() / mask.sum())


def test_init_from_the_export_starts_from_exactly_those_weights(tiny_run, tmp_path):
    """One process (no layout): the weights the run starts from and its first loss are the checkpoint's."""
    args = train_args(tiny_run.models, "--set", "layout={}", "--set", "train.steps=1", *FROZEN_SGD)
    result = mimo(*args, "--run-dir", str(tmp_path / "run"), "--init-from", str(tiny_run.exported),
                  "--export", str(tmp_path / "start.safetensors"), timeout=120)
    assert result.returncode == 0, result.stderr
    start = load_safetensors(tmp_path / "start.safetensors")
    assert sorted(start) == sorted(tiny_run.consolidated)
    differ = [name for name in start if not torch.equal(start[name], tiny_run.consolidated[name])]
    assert not differ, f"the run did not start from the exported weights: {differ}"

    (first,) = metrics(tmp_path / "run")
    want = _first_batch_loss(args, tiny_run.consolidated)
    assert abs(first["loss"] - want) <= 1e-5 * want, (first["loss"], want)
    untrained = _first_batch_loss(args, None)
    assert abs(untrained - want) > 1e-3 * want, "the check cannot tell the trained weights from the initial ones"


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def neox_folder(tmp_path_factory, tiny_run) -> Path:
    """A tiny causal LM of another structure (``gpt_neox.layers``, no ``model.embed_tokens``), with a tokenizer."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    folder = tmp_path_factory.mktemp("neox")
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=128)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_run.models / "language").save_pretrained(folder)
    return folder


def _bad_run(tiny_run: TinyRun, tmp_path: Path, nproc: int | None, *more: str):
    launch = ["--nproc", str(nproc)] if nproc else ["--set", "layout={}"]
    run_dir = tmp_path / "run"
    result = mimo(*train_args(tiny_run.models, "--set", "train.steps=1", *launch, "--run-dir", str(run_dir), *more),
                  timeout=120)
    return result, run_dir


def test_language_folder_that_is_not_a_model(tiny_run, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model\n")
    result, run_dir = _bad_run(tiny_run, tmp_path, 3, "--set", f"model.language.hf={folder}")
    assert_one_clear_error(result, str(folder), "is not a Hugging Face model folder (no config.json)")
    assert not run_dir.exists()


def test_language_folder_holding_an_encoder(tiny_run, tmp_path):
    siglip = tiny_run.models / "siglip"
    result, _ = _bad_run(tiny_run, tmp_path, 3, "--set", f"model.language.hf={siglip}")
    assert_one_clear_error(result, str(siglip), "not a causal language model")


@pytest.mark.parametrize("nproc", [None, 3])
def test_language_model_of_another_structure(tiny_run, neox_folder, tmp_path, nproc):
    result, _ = _bad_run(tiny_run, tmp_path, nproc, "--set", f"model.language.hf={neox_folder}")
    assert_one_clear_error(result, str(neox_folder), "GPTNeoXForCausalLM", "lacks the expected structure")


def test_projection_that_does_not_fit_the_init_weights(tiny_run, tmp_path):
    """A projection always fits the encoder and the language model (the config offers only its kind and middle
    width), so the misfit a user can make is between the config and the weights it starts from."""
    result, _ = _bad_run(tiny_run, tmp_path, None, "--set", "model.modalities.images.projection.hidden_size=16",
                         "--init-from", str(tiny_run.exported))
    assert_one_clear_error(result, str(tiny_run.exported), "does not fit this model (3 tensors)")
    assert "modalities.images.projection.0.weight: file has [64, 32], model has [16, 32]" in result.stderr


def test_placeholder_that_cannot_be_one_token(tiny_run, tmp_path):
    result, run_dir = _bad_run(tiny_run, tmp_path, 3, "--set", 'model.modalities.images.placeholder="<my image>"')
    assert_one_clear_error(result, "placeholder='<my image>' cannot be a single token")
    assert not run_dir.exists()


def test_more_pipeline_stages_than_layers(tiny_run, tmp_path):
    # Refused before torchrun starts: the 6 processes are never launched.
    result, run_dir = _bad_run(tiny_run, tmp_path, 6, "--set", "layout.language.pp=5")
    assert_one_clear_error(result, "layout.language", "cannot spread 4 layers over 5 pipeline stages")
    assert not run_dir.exists()


def test_export_hf_into_a_folder_that_is_not_empty(tiny_run, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.exported.rglob("*")}
    result, run_dir = _bad_run(tiny_run, tmp_path, 3, "--export-hf", str(tiny_run.exported))
    assert_one_clear_error(result, str(tiny_run.exported), "is a folder that is not empty")
    assert not run_dir.exists()
    assert {p: p.stat().st_mtime_ns for p in tiny_run.exported.rglob("*")} == before
