"""Hugging Face language models as mimo modules: stages equal transformers' own forward, each stage reads and
holds only its own tensors, placeholders by string grow the vocabulary, and bad folders are clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen2ForCausalLM

from mimo.config import config_from_dict
from mimo.model.hf.language import HFLanguageSlice, per_token_loss
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.stages import LanguageStage
from mimo.parallel.stage_split import split_layers
from tests.hf_fixtures import tiny_hf_models  # noqa: F401


@pytest.fixture(scope="module")
def qwen2_sliding(tmp_path_factory):
    """Qwen2 with sliding-window and full layers mixed, untied embeddings."""
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=4, max_window_layers=2, tie_word_embeddings=False)
    assert set(config.layer_types) == {"full_attention", "sliding_attention"}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def _batch(vocab: int, batch: int = 2, seq: int = 12):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (batch, seq), generator=generator)
    labels = torch.randint(0, vocab, (batch, seq), generator=generator)
    labels[:, -3:] = -100
    return ids, torch.arange(seq).expand(batch, seq), labels


def _reference_losses(folder, attn, ids, positions, labels):
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn, dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100
    ).view(labels.shape), model


def _chain(config, num_stages, ids, positions, labels):
    ranges = split_layers(config.num_layers, num_stages)
    stages = [HFLanguageSlice(config, layers=r, has_embedding=i == 0, has_head=i == num_stages - 1)
              for i, r in enumerate(ranges)]
    hidden = stages[0].embed(ids, positions)
    for stage in stages:
        hidden = stage(hidden, position_ids=positions, labels=labels)
    return hidden, stages


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_stages_equal_the_transformers_forward(model_name, attn, num_stages, tiny_hf_models, qwen2_sliding):
    folder = tiny_hf_models["language"] if model_name == "llama" else qwen2_sliding
    config = HFLanguageConfig(hf=str(folder), attn_implementation=attn)
    ids, positions, labels = _batch(config.vocab_size)
    want, reference = _reference_losses(folder, attn, ids, positions, labels)
    got, stages = _chain(config, num_stages, ids, positions, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The union of the stages' state dicts is the HF model's own (a tied head appears under both names).
    names = set().union(*(stage.state_dict() for stage in stages))
    assert names == set(reference.state_dict())


def test_stage_gradients_equal_the_transformers_model(tiny_hf_models):
    folder = tiny_hf_models["language"]
    config = HFLanguageConfig(hf=str(folder))
    assert config.tie_word_embeddings
    ids, positions, labels = _batch(config.vocab_size)
    want, reference = _reference_losses(folder, "sdpa", ids, positions, labels)
    want.sum().backward()
    got, stages = _chain(config, 2, ids, positions, labels)
    got.sum().backward()
    reference_grads = dict(reference.named_parameters())
    for stage in stages:
        for name, parameter in stage.named_parameters():
            if name == "lm_head.weight":
                continue  # A copy of the tied embedding: its gradient is the other half of the sum below.
            got_grad = parameter.grad
            if name == "model.embed_tokens.weight":
                got_grad = got_grad + stages[-1].lm_head.weight.grad  # The trainer sums the two copies.
            want_grad = reference_grads[name].grad
            # Norm-wise: the embedding sums many rows' contributions, in another order than the reference.
            error = (got_grad - want_grad).norm() / want_grad.norm()
            assert error <= 1e-5, f"{name}: gradients differ by {error:.2e} (relative)"
    assert stages[0].tied_parameters == {"model.embed_tokens.weight": "model.embed_tokens.weight"}
    assert stages[-1].tied_parameters == {"lm_head.weight": "model.embed_tokens.weight"}


def test_per_token_loss_matches_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.tensor([[1, 2, -100, 10, 0], [-100, -100, 3, 4, 5]])
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(2, 5)
    torch.testing.assert_close(per_token_loss(logits, labels), want)


def test_each_pipeline_stage_holds_and_reads_only_its_own_tensors(tiny_hf_models):
    """pp=4: a stage's parameter bytes equal its share of the HF state dict, and it read nothing else."""
    folder = tiny_hf_models["language"]
    raw = {"model": {"language": {"hf": str(folder)}}}
    cfg = config_from_dict(raw)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    ranges = split_layers(cfg.model.language.num_layers, 4)
    for stage, layers in enumerate(ranges):
        built = LanguageStage(cfg.model, stage=stage, num_stages=4, layers=layers, seed=0)
        own = {name.removeprefix("language.") for name, _ in built.named_parameters()}
        share = {name for name in reference
                 if any(name.startswith(f"model.layers.{i}.") for i in layers)
                 or (stage == 0 and name == "model.embed_tokens.weight")
                 or (stage == 3 and name in ("model.norm.weight", "lm_head.weight"))}
        assert own == share
        held = sum(p.numel() * p.element_size() for p in built.parameters())
        theory = sum(reference[name].numel() * reference[name].element_size() for name in share)
        assert abs(held - theory) <= 0.1 * theory, (stage, held, theory)
        opened = set(built.language.files.opened)
        # The tied head of the last stage is read from the embedding tensor (the file has no lm_head).
        assert opened == {("model.embed_tokens.weight" if n == "lm_head.weight" else n) for n in share}


def test_placeholder_strings_are_added_and_grow_the_embedding(tiny_hf_models):
    folder = tiny_hf_models["language"]
    raw = {"model": {"language": {"hf": str(folder)}, "modalities": {
        "images": {"placeholder": "<image>", "encoders": {"vit": {"kind": "vision", "image_size": 8,
                                                                 "patch_size": 4, "hidden_size": 16}}}}}}
    cfg = config_from_dict(raw)
    base = cfg.model.language.base_vocab_size
    assert cfg.model.placeholder_ids == {"images": base}
    assert cfg.model.language.vocab_size == base + 1
    whole = HFLanguageSlice(cfg.model.language)
    embedding = whole.model.embed_tokens.weight
    assert embedding.shape[0] == base + 1
    torch.testing.assert_close(embedding[-1], embedding[:-1].mean(0))
    assert whole.lm_head.weight is embedding  # still tied on one stage


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "is not a Hugging Face model folder"),
        (lambda d: _rewrite(d, architectures=["GPT2LMHeadModel"], model_type="gpt2"), "not a causal language model"),
    ],
)
def test_bad_folders_are_one_clear_error(edit, message, tiny_hf_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_models["language"], folder)
    edit(folder)
    with pytest.raises(ValueError, match=message):
        config_from_dict({"model": {"language": {"hf": str(folder)}}})


def test_an_architecture_without_the_decoder_structure_names_what_it_found(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                                     intermediate_size=32)).save_pretrained(tmp_path)
    config = HFLanguageConfig(hf=str(tmp_path))
    with pytest.raises(ValueError, match=r"lacks the expected structure model.embed_tokens.*found.*gpt_neox"):
        HFLanguageSlice(config)


def test_placeholder_that_cannot_be_one_token(tiny_hf_models):
    raw = {"model": {"language": {"hf": str(tiny_hf_models["language"])}, "modalities": {
        "images": {"placeholder": "<my image>", "encoders": {"vit": {"kind": "vision"}}}}}}
    with pytest.raises(ValueError, match="cannot be a single token"):
        config_from_dict(raw)


def _rewrite(folder, **values):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))
