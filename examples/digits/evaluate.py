"""Held-out accuracy of a trained digits model: greedy answers to every held-out question.

    python examples/digits/evaluate.py --checkpoint runs/digits/checkpoints --records runs/digits/data/heldout.json

Loads the checkpoint once (``mimo.training.checkpoint_export.load_checkpoint_model``), builds each record's prompt
exactly as ``mimo generate`` does (the language model's chat template, the image marker expanded to the encoder's
rows, the generation prompt), and answers greedily in batches (right padding: with the causal mask a row's real
tokens never see its padding). An answer is correct when it contains the right number word or digit as a whole
word ("seven", "Seven.", "7"; not "seventeen"); exact matches (the answer is the word) are counted too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def is_correct(answer: str, word: str) -> bool:
    """Whether ``answer`` contains the number word ``word`` or its digit as a whole word."""
    digit = str(DIGIT_WORDS.index(word))
    return re.search(rf"\b({word}|{digit})\b", answer.lower()) is not None


def answer_logits(model, input_ids: torch.Tensor, lengths: torch.Tensor, modality_inputs) -> torch.Tensor:
    """Next-token logits ``[B, vocab]`` at each row's last real token.

    The head runs on those positions only (``MimoModel.logits`` would run it on every position, a fifth of the
    work of a forward pass of SmolLM2 at this length); the layers are the same ones ``logits`` runs.
    """
    positions = torch.arange(input_ids.shape[1])[None].expand_as(input_ids)
    rows = torch.arange(input_ids.shape[0])
    language = model.language
    if hasattr(language, "_run_layers") and hasattr(language, "head_logits"):
        combined = model.embed(input_ids=input_ids, position_ids=positions, modality_inputs=modality_inputs)
        hidden = language._run_layers(combined, positions, None)
        return language.head_logits(hidden[rows, lengths - 1]).float()
    logits = model.logits(input_ids=input_ids, position_ids=positions, modality_inputs=modality_inputs)
    return logits[rows, lengths - 1].float()


@torch.no_grad()
def greedy_answers(model, prompts: list[list[int]], samples: list[dict], stop_ids: set[int], *,
                   max_new_tokens: int, pad_id: int) -> list[list[int]]:
    """Greedy continuation of each prompt (no cache: each step runs the whole sequence of the unfinished rows)."""
    from mimo.data.collate import collate

    answers: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        if not active:
            break
        sequences = [prompts[i] + answers[i] for i in active]
        lengths = torch.tensor([len(s) for s in sequences])
        input_ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
        modality_inputs = collate([samples[i] for i in active])["modality_inputs"]
        tokens = answer_logits(model, input_ids, lengths, modality_inputs).argmax(dim=-1).tolist()
        still = []
        for i, token in zip(active, tokens, strict=True):
            if token in stop_ids:
                continue
            answers[i].append(token)
            still.append(i)
        active = still
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/digits/checkpoints", help="checkpoint folder or its root")
    parser.add_argument("--records", default="runs/digits/data/heldout.json", help="held-out records (JSON)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N records only (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--examples", type=int, default=8, help="print this many answers (wrong ones first)")
    parser.add_argument("--out", type=Path, default=None, help="also write every answer to this JSON file")
    args = parser.parse_args(argv)

    from mimo.data.conversations.dataset import build_chat_tokenizer, kind_of_modalities
    from mimo.data.conversations.media import MediaLoader
    from mimo.data.conversations.records import DEFAULT_MARKERS, Turn
    from mimo.model.configs import PAD_TOKEN_ID
    from mimo.training.checkpoint_export import load_checkpoint_model

    start = time.perf_counter()
    cfg, model = load_checkpoint_model(args.checkpoint)
    model.eval()
    modality = kind_of_modalities(cfg.model)["image"]
    encoder_name, encoder = next(iter(cfg.model.modalities[modality].encoders.items()))
    loader = MediaLoader(encoder)
    tokenizer = build_chat_tokenizer(cfg.model, {"image": DEFAULT_MARKERS["image"]})
    loaded = time.perf_counter() - start

    records_path = Path(args.records)
    records = json.loads(records_path.read_text(encoding="utf-8"))
    if args.limit:
        records = records[: args.limit]
    prompts, samples, stop_ids = [], [], set()
    for record in records:
        image = records_path.parent / record["image"]
        question = record["conversations"][0]["value"]
        ids, stops = tokenizer.prompt([Turn("user", question)], [loader.tokens_of(image)])
        prompts.append(ids)
        stop_ids |= stops
        samples.append({"modality_inputs": {modality: {encoder_name: loader.encoder_inputs([image])}}})

    answers: list[str] = []
    generation_start = time.perf_counter()
    for first in range(0, len(records), args.batch_size):
        chunk = slice(first, first + args.batch_size)
        ids = greedy_answers(model, prompts[chunk], samples[chunk], stop_ids,
                             max_new_tokens=args.max_new_tokens, pad_id=PAD_TOKEN_ID)
        answers += [tokenizer.decode_answer(a) for a in ids]
    generation = time.perf_counter() - generation_start

    results = []
    for record, answer in zip(records, answers, strict=True):
        word = record["conversations"][1]["value"]
        results.append({"id": record["id"], "question": record["conversations"][0]["value"].split("\n")[-1],
                        "expected": word, "answer": answer, "correct": is_correct(answer, word),
                        "exact": answer.strip().lower() == word})
    total = len(results)
    correct = sum(r["correct"] for r in results)
    exact = sum(r["exact"] for r in results)
    per_digit = Counter(r["expected"] for r in results)
    right_digit = Counter(r["expected"] for r in results if r["correct"])
    print(f"answered {total} held-out questions in {generation:.1f} s (model loaded in {loaded:.1f} s, "
          f"{torch.get_num_threads()} threads)")
    print("per digit: " + ", ".join(f"{w} {right_digit[w]}/{per_digit[w]}" for w in DIGIT_WORDS if per_digit[w]))
    shown = sorted(results, key=lambda r: r["correct"])[: args.examples]
    for r in shown:
        print(f"  {r['id']}: {r['question']!r} -> {r['answer']!r} (expected {r['expected']!r}, "
              f"{'correct' if r['correct'] else 'wrong'})")
    print(f"exact answers: {exact}/{total} = {100.0 * exact / total:.1f} %")
    print(f"held-out accuracy: {correct}/{total} = {100.0 * correct / total:.1f} %")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"accuracy": correct / total, "exact": exact / total, "total": total,
                                        "answers": results}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
