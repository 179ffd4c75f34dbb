"""A real pretrained language model: SmolLM2-135M-Instruct fed by a tiny SigLIP, pipelined, against transformers.

Two runs of 3 steps on synthetic data, images on their own rank: the language model over 2 stages (3 ranks, through
the command line, as users run it, with ``--export-hf``) and over 3 stages (4 ranks, ``distributed_run``, then
``export_hf`` on the gathered weights). For each:

- the first-step loss equals the one transformers computes for the same global batch: ``AutoModelForCausalLM``
  with its embedding grown by the ``<image>`` row (the mean of the others, as mimo grows it), the SigLIP via
  ``SiglipVisionModel``, the projection written here with mimo's initial weights, spliced into ``inputs_embeds``;
- the exported folder loads with ``AutoModelForCausalLM.from_pretrained`` and gives the logits of the trained
  stages (mimo's own ``HFLanguageSlice`` chain, split as in the run, holding the consolidated weights) on a chat
  prompt with an ``<image>`` token, within 1e-5; the tokenizer knows ``<image>`` as one token with mimo's id and
  keeps SmolLM2's chat template.

Short sequences (40 tokens: 2 images x 16 rows + 8 text), 4 samples per step, plain SGD: about 2 minutes in all,
half of it converting SmolLM2 once (the ``smollm2_dir`` fixture).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from torch import Tensor, nn

from mimo.config import config_from_dict
from mimo.data import LOSS_MASK, MicrobatchLoader, SyntheticMimoDataset, collate
from mimo.export import load_safetensors
from tests.e2e.test_cli import metrics, mimo
from tests.hf_fixtures import smollm2_dir, tiny_hf_models  # noqa: F401  (fixtures)
from tests.parity.harness import distributed_run, relative_error

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(600)]

STEPS = 3
IGNORE_INDEX = -100
LANGUAGE = "language."
PROJECTION = "modalities.images.projection."
PROMPT = [{"role": "user", "content": "<image> Which digit is in the picture?"}]


def _layout(language_pp: int) -> dict[str, Any]:
    return {"images": {"dp": 1, "pp": 1, "rank_offset": 0}, "language": {"dp": 1, "pp": language_pp, "rank_offset": 1}}


def smollm2_config(smollm2: Path, siglip: Path, language_pp: int) -> dict[str, Any]:
    return {
        "model": {
            "language": {"hf": str(smollm2)},
            "modalities": {"images": {"placeholder": "<image>", "encoders": {"siglip": {"hf": str(siglip)}},
                                      "projection": {"kind": "mlp"}}},
        },
        # Every sample has 1-2 images: mimo's HF encoders cannot run a microbatch without any (see test_hf_parity).
        "data": {"num_samples": 32, "seq_length": 40, "max_items_per_sample": 2, "item_presence": 1.0},
        "train": {"steps": STEPS, "global_batch_size": 4, "num_microbatches": 2, "progress": False,
                  "collective_timeout_s": 120},
        "optim": {"default": {"name": "sgd", "lr": 0.05}, "lr_schedule": {"decay": "constant"}, "clip_grad": 1.0},
        "checkpoint": {"at_end": False},
        "layout": _layout(language_pp),
    }


@dataclass
class Trained:
    language_pp: int
    raw: dict[str, Any]
    first_loss: float
    weights: dict[str, Tensor]
    """Consolidated, under mimo names."""
    export: Path
    """Hugging Face folders of the trained model."""


@pytest.fixture(scope="module")
def pp2_cli(smollm2_dir, tiny_hf_models, tmp_path_factory) -> Trained:  # noqa: F811
    """``mimo train --nproc 3``: images on rank 0, SmolLM2 over ranks 1-2; ``--export`` and ``--export-hf``."""
    root = tmp_path_factory.mktemp("smollm2_pp2")
    raw = smollm2_config(smollm2_dir, tiny_hf_models["siglip"], 2)
    recipe = root / "smollm2_vlm.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    result = mimo("train", "--config", str(recipe), "--nproc", "3", "--run-dir", str(root / "run"),
                  "--export", str(root / "weights.safetensors"), "--export-hf", str(root / "hf"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = metrics(root / "run")
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    return Trained(2, raw, rows[0]["loss"], load_safetensors(root / "weights.safetensors"), root / "hf")


@pytest.fixture(scope="module")
def pp3_harness(smollm2_dir, tiny_hf_models, tmp_path_factory) -> Trained:  # noqa: F811
    """4 gloo processes: images on rank 0, SmolLM2 over ranks 1-3; ``export_hf`` of the gathered weights."""
    from mimo.model.hf.export import export_hf

    root = tmp_path_factory.mktemp("smollm2_pp3")
    raw = smollm2_config(smollm2_dir, tiny_hf_models["siglip"], 3)
    losses, weights = distributed_run(raw, STEPS, world_size=4, tmp_path=root, timeout_s=360)
    assert all(rank_losses == losses[0] for rank_losses in losses), f"ranks disagree on the losses: {losses}"
    export_hf(weights, config_from_dict(copy.deepcopy(raw)).model, root / "hf")
    return Trained(3, raw, losses[0][0], weights, root / "hf")


@pytest.fixture(params=["pp2_cli", "pp3_harness"])
def trained(request) -> Trained:
    return request.getfixturevalue(request.param)


# --- transformers' loss of the first global batch ---------------------------------------------------------------


def _grown_causal_lm(folder: str, vocab_size: int) -> nn.Module:
    """``AutoModelForCausalLM`` with ``vocab_size`` rows: the new ones are the mean of the saved rows."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    saved = lm.get_input_embeddings().weight.detach().clone()
    assert vocab_size > saved.shape[0], "SmolLM2's tokenizer has no <image>: mimo must have grown the vocabulary"
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        lm.get_input_embeddings().weight[saved.shape[0]:] = saved.mean(dim=0, keepdim=True)
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight, "SmolLM2 ties its head"
    return lm


@dataclass
class Reference:
    first_loss: float
    """The first global batch's loss, by transformers (the same for every layout)."""
    grown_rows: Tensor
    """The rows the reference added to SmolLM2's embedding (the mean of the saved rows)."""
    mimo_grown_rows: Tensor
    """The same rows of mimo's initial model."""


@pytest.fixture(scope="module")
def reference(smollm2_dir, tiny_hf_models) -> Reference:  # noqa: F811
    """transformers' loss of the first global batch (only the layout differs between the runs)."""
    from transformers import SiglipVisionModel

    from mimo.model import MimoModel

    raw = smollm2_config(smollm2_dir, tiny_hf_models["siglip"], 2)
    cfg = config_from_dict(copy.deepcopy(raw))
    language, images = cfg.model.language, cfg.model.modalities["images"]
    # mimo initialises the projection from the seed; only those values are taken from mimo's model.
    mimo_initial = MimoModel(cfg.model, seed=cfg.train.seed).state_dict()
    initial = {name[len(PROJECTION):]: t.detach().clone()
               for name, t in mimo_initial.items() if name.startswith(PROJECTION)}
    mimo_grown_rows = mimo_initial[f"{LANGUAGE}model.embed_tokens.weight"][language.base_vocab_size:].clone()
    del mimo_initial
    projection = nn.Sequential(nn.Linear(images.encoder_hidden_size, language.hidden_size), nn.GELU(),
                               nn.Linear(language.hidden_size, language.hidden_size))
    projection.load_state_dict(initial)
    siglip = SiglipVisionModel.from_pretrained(tiny_hf_models["siglip"], dtype=torch.float32).eval()
    lm = _grown_causal_lm(language.hf, language.vocab_size)

    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    (indices,) = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                                  seed=cfg.data.seed).step_indices()
    batch = collate([dataset[i] for i in indices])
    input_ids = batch["input_ids"]
    with torch.no_grad():
        pixels = batch["modality_inputs"]["images"]["siglip"]["pixel_values"]
        features = siglip(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # [N, 16, 32]
        rows = projection(features.reshape(-1, features.shape[-1]))  # images in sample order
        positions = (input_ids == images.token_id).nonzero(as_tuple=True)  # row-major over [B, S]
        assert positions[0].numel() == rows.shape[0] > 0
        embeddings = lm.get_input_embeddings()(input_ids).index_put(positions, rows)
        logits = lm(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids),
                    position_ids=batch["position_ids"], use_cache=False).logits
    labels = batch["labels"]
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none",
                                ignore_index=IGNORE_INDEX).view_as(labels)
    mask = batch[LOSS_MASK].float()
    grown_rows = lm.get_input_embeddings().weight[language.base_vocab_size:].detach().clone()
    return Reference(float((per_token * mask).sum() / mask.sum()), grown_rows, mimo_grown_rows)


def test_the_placeholder_row_mimo_adds_is_the_mean_of_smollm2s_rows(reference):
    assert reference.grown_rows.shape == reference.mimo_grown_rows.shape == (1, 576)
    assert torch.equal(reference.mimo_grown_rows, reference.grown_rows)


def test_first_step_loss_equals_transformers(trained, reference):
    got, want = trained.first_loss, reference.first_loss
    assert abs(got - want) <= 1e-5 * abs(want), f"language pp={trained.language_pp}: loss {got} vs transformers {want}"


# --- the export against the trained stages ----------------------------------------------------------------------


def _stage_logits(raw: dict[str, Any], weights: dict[str, Tensor], input_ids: Tensor, pp: int) -> Tensor:
    """Logits of mimo's language stages (split as in the run) holding ``weights``, from their own forward."""
    from mimo.model.providers import build_language_slice
    from mimo.parallel.stage_split import split_layers

    cfg = config_from_dict(copy.deepcopy(raw))
    ranges = split_layers(cfg.model.language.num_layers, pp)
    position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0)
    captured: list[Tensor] = []
    hidden: Tensor | None = None
    for stage, layers in enumerate(ranges):
        last = stage == len(ranges) - 1
        piece = build_language_slice(cfg.model.language, layers=layers, has_embedding=stage == 0, has_head=last,
                                     seed=cfg.train.seed, prefix=LANGUAGE)
        names = [name for name, _ in piece.named_parameters(remove_duplicate=False)]
        assert all(LANGUAGE + name in weights for name in names), "the consolidated weights lack a stage's tensor"
        piece.load_state_dict({name: weights[LANGUAGE + name] for name in piece.state_dict()}, strict=True)
        piece.eval()
        with torch.no_grad():
            if stage == 0:
                hidden = piece.embed(input_ids, position_ids)
            if not last:
                hidden = piece(hidden, position_ids=position_ids)
                continue
            # The head returns per-token losses; its logits are what lm_head computes inside that forward.
            handle = piece.lm_head.register_forward_hook(lambda _m, _i, output: captured.append(output))
            piece(hidden, position_ids=position_ids, labels=torch.zeros_like(input_ids))
            handle.remove()
    assert len(captured) == 1
    return captured[0]


def test_export_loads_in_transformers_with_the_trained_stages_logits(trained, smollm2_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained.export / "language")
    image_id = config_from_dict(copy.deepcopy(trained.raw)).model.modalities["images"].token_id
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert (input_ids == image_id).sum() == 1, "<image> must be one token, with the id mimo trained with"

    exported = AutoModelForCausalLM.from_pretrained(trained.export / "language", dtype=torch.float32).eval()
    assert exported.config.vocab_size == image_id + 1
    with torch.no_grad():
        logits = exported(input_ids).logits
    want = _stage_logits(trained.raw, trained.weights, input_ids, trained.language_pp)
    error = relative_error(logits, want)
    assert error <= 1e-5, f"language pp={trained.language_pp}: exported logits differ by {error:.2e} (relative)"
    # The row mimo added and trained is in the export: the <image> position and the <image> logit.
    position = int((input_ids[0] == image_id).nonzero()[0, 0])
    assert relative_error(logits[0, position], want[0, position]) <= 1e-5
    assert relative_error(logits[..., image_id], want[..., image_id]) <= 1e-5

    # Not a vacuous match: the export is the trained model, not SmolLM2 as it was.
    state = exported.state_dict()
    with safe_open(str(Path(smollm2_dir) / "model.safetensors"), framework="pt") as original:
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                     "model.layers.29.mlp.down_proj.weight"):
            before = original.get_tensor(name)
            assert not torch.equal(state[name][: before.shape[0]], before), f"{name} did not train"


def test_exported_tokenizer_keeps_the_placeholder_and_the_chat_template(pp2_cli, smollm2_dir):  # noqa: F811
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(pp2_cli.export / "language")
    image_id = config_from_dict(copy.deepcopy(pp2_cli.raw)).model.modalities["images"].token_id
    assert "<image>" not in source.get_vocab() and image_id == len(source)
    assert tokenizer.convert_tokens_to_ids("<image>") == image_id and len(tokenizer) == image_id + 1
    assert tokenizer.tokenize("<image>") == ["<image>"]
    assert tokenizer.chat_template and tokenizer.chat_template == source.chat_template
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        source.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # Text without the placeholder encodes as SmolLM2 encodes it; the placeholder splits nothing around it.
    assert tokenizer("The capital of France is")["input_ids"] == source("The capital of France is")["input_ids"]
    ids = tokenizer("a<image>b")["input_ids"]
    assert ids.count(image_id) == 1
    assert tokenizer.decode(ids) == "a<image>b"
