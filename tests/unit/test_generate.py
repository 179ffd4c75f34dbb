"""``mimo generate``'s greedy loop gives what transformers' own greedy ``generate`` gives for the same prompt."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from mimo.config import config_from_dict
from mimo.data.conversations.dataset import build_chat_tokenizer
from mimo.data.conversations.records import Turn
from mimo.generate import generate
from mimo.model import MimoModel
from tests.hf_fixtures import tiny_hf_models  # noqa: F401


def test_greedy_answer_equals_transformers_generate(tiny_hf_models):
    cfg = config_from_dict({"model": {"language": {"hf": str(tiny_hf_models["language"])}}})
    model = MimoModel(cfg.model, seed=0)
    with torch.no_grad():  # a trained-looking model: random weights would stop at once on a special token
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    answer = generate(model, cfg.model, "What is seven plus one?", max_new_tokens=6)

    tokenizer = build_chat_tokenizer(cfg.model, {})
    prompt, stop_ids = tokenizer.prompt([Turn("user", "What is seven plus one?")], [])
    reference = AutoModelForCausalLM.from_pretrained(tiny_hf_models["language"], dtype=torch.float32)
    reference.load_state_dict({k.removeprefix("language."): v for k, v in model.state_dict().items()})
    output = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=6, do_sample=False, eos_token_id=sorted(stop_ids),
                                pad_token_id=tokenizer.tokenizer.pad_token_id)
    expected = tokenizer.decode_answer([t for t in output[0, len(prompt):].tolist() if t not in stop_ids])
    assert answer == expected and answer
