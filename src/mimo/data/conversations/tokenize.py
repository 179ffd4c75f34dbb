"""Conversation turns to token ids, with each media marker expanded into its placeholder rows and a mask of the
tokens the model is trained to produce (the assistant answers and the end-of-turn token(s) that close them).

Two tokenizers share the ``ChatTokenizer`` protocol: ``HFChatTokenizer`` uses a Hugging Face tokenizer and its own
chat template, so the model is trained on exactly the prompt format it will be served with; ``BuiltinChatTokenizer``
gives the built-in tiny language models (which have no tokenizer) a fixed byte-level chat format.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mimo.data.conversations.records import DEFAULT_MARKERS, MEDIA_KINDS, Turn, find_markers
from mimo.model.configs import PAD_TOKEN_ID

__all__ = ["BuiltinChatTokenizer", "ChatTokenizer", "EncodedChat", "HFChatTokenizer"]


@dataclass(frozen=True)
class EncodedChat:
    """A tokenized conversation with every marker expanded to its placeholder rows.

    ``assistant_mask[j]`` is True where token ``j`` is a training target: so the label at position ``j - 1`` is
    ``input_ids[j]`` exactly where the mask is True. ``turn_ends[i]`` is the index just after turn ``i`` (its
    end-of-turn tokens included), the places where the sequence can be cut without splitting a turn or an item.
    """

    input_ids: list[int]
    assistant_mask: list[bool]
    turn_ends: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.assistant_mask):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.assistant_mask)} mask entries")


class ChatTokenizer(Protocol):
    """What the conversation data set needs from a tokenizer."""

    def encode(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> EncodedChat:
        """Tokenize ``turns``; ``item_tokens[k]`` is the number of placeholder rows of the k-th marker occurrence
        (text order, across turns and kinds). Raises ValueError for a conversation it cannot encode."""
        ...

    def prompt(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> tuple[list[int], set[int]]:
        """Ids of ``turns`` and the start of an assistant answer (for generation), and the ids that end one."""
        ...

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Readable text of generated ids."""
        ...


def _check_placeholders(placeholder_ids: Mapping[str, int], markers: Mapping[str, str]) -> dict[str, str]:
    """The markers of the kinds that have a placeholder id (other markers stay plain text)."""
    unknown = [kind for kind in placeholder_ids if kind not in MEDIA_KINDS]
    if unknown:
        raise ValueError(f"placeholder_ids has unknown media kinds {unknown}; the kinds are {list(MEDIA_KINDS)}")
    ids = list(placeholder_ids.values())
    if len(set(ids)) != len(ids):
        raise ValueError(f"placeholder_ids must differ per kind, got {dict(placeholder_ids)}")
    missing = [kind for kind in placeholder_ids if kind not in markers]
    if missing:
        raise ValueError(f"no marker for media kinds {missing}; markers are {dict(markers)}")
    return {kind: markers[kind] for kind in placeholder_ids}


def _expand(
    ids: list[int],
    mask: list[bool],
    turn_ends: list[int],
    kind_of_id: Mapping[int, str],
    marker_kinds: list[str],
    item_tokens: Sequence[int],
) -> EncodedChat:
    """Repeat the k-th placeholder ``item_tokens[k]`` times, after checking the placeholders match the markers."""
    counts = _check_item_tokens(item_tokens, len(marker_kinds))
    found = [kind_of_id[token] for token in ids if token in kind_of_id]
    if found != marker_kinds:
        raise ValueError(
            f"the tokens hold placeholders {found} but the text has markers {marker_kinds}; does the text (or the "
            "chat template) contain a placeholder token's own string?"
        )
    out_ids: list[int] = []
    out_mask: list[bool] = []
    new_index: list[int] = []  # old index -> new index, one entry past the end too
    item = 0
    for token, target in zip(ids, mask, strict=True):
        new_index.append(len(out_ids))
        if token in kind_of_id:
            out_ids.extend([token] * counts[item])
            out_mask.extend([False] * counts[item])
            item += 1
        else:
            out_ids.append(token)
            out_mask.append(target)
    new_index.append(len(out_ids))
    return EncodedChat(out_ids, out_mask, [new_index[end] for end in turn_ends])


def _check_item_tokens(item_tokens: Sequence[int], markers: int) -> list[int]:
    if len(item_tokens) != markers:
        raise ValueError(f"item_tokens gives {len(item_tokens)} row counts for {markers} marker(s) in the text")
    counts = []
    for k, count in enumerate(item_tokens):
        try:
            value = operator.index(count)
        except TypeError:
            value = 0
        if isinstance(count, bool) or value < 1:
            raise ValueError(f"item_tokens[{k}]={count!r} must be a positive integer (rows of item {k})")
        counts.append(value)
    return counts


def _marker_kinds(turns: Sequence[Turn], markers: Mapping[str, str]) -> list[str]:
    return [kind for turn in turns for kind in find_markers(turn.text, markers)]


def _marker_regex(strings: Collection[str]) -> re.Pattern[str] | None:
    """One pattern for all markers, longest first (so a marker wins over its own prefix); None without markers."""
    if not strings:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


class HFChatTokenizer:
    """A Hugging Face tokenizer and its chat template.

    The assistant spans are found by rendering prefixes of the conversation: the tokens between
    ``messages[:i]`` rendered with the generation prompt and ``messages[:i+1]`` are assistant turn ``i`` (its
    content and closing tokens, without the role header), whatever the template. This needs a template whose
    prefixes render (and tokenize) as prefixes of the whole conversation; one that does not is refused with a
    message, never silently mis-masked. Whitespace after the closing special token (ChatML's ``\\n``) is left out:
    the model stops at the end token and never produces it.
    """

    def __init__(
        self,
        folder: str,
        placeholder_ids: Mapping[str, int],
        added_tokens: Mapping[str, int] | None = None,
        markers: Mapping[str, str] = DEFAULT_MARKERS,
    ) -> None:
        from mimo.model.hf.tokenizer import load_tokenizer  # transformers: imported only for HF models

        self.folder = str(folder)
        self._markers = _check_placeholders(placeholder_ids, markers)
        self._tokenizer = load_tokenizer(self.folder)
        _add_tokens(self._tokenizer, dict(added_tokens or {}), self.folder)
        if not self._tokenizer.chat_template:
            raise ValueError(
                f"the tokenizer in {self.folder} has no chat template (chat_template.jinja, or 'chat_template' in "
                "tokenizer_config.json); conversations are rendered with the model's own template"
            )
        self._strings = {kind: self._single_token(kind, token) for kind, token in placeholder_ids.items()}
        self._kind_of_id = {token: kind for kind, token in placeholder_ids.items()}
        self._special_ids = set(self._tokenizer.all_special_ids) | set(self._tokenizer.get_added_vocab().values())
        self._by_marker = {marker: self._strings[kind] for kind, marker in self._markers.items()}
        self._marker_pattern = _marker_regex(self._by_marker)

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer, with the added tokens in (for decoding in tests and tools)."""
        return self._tokenizer

    def _single_token(self, kind: str, token: int) -> str:
        """The placeholder's token string, which must be an added (never split) token that encodes to ``token``."""
        tokenizer = self._tokenizer
        text = tokenizer.convert_ids_to_tokens(token) if 0 <= token < len(tokenizer) else None
        if text is None:
            raise ValueError(
                f"placeholder id {token} ({kind}) is not a token of the tokenizer in {self.folder} "
                f"({len(tokenizer)} tokens)"
            )
        added = tokenizer.get_added_vocab()
        if added.get(text) != token or self._ids(text) != [token]:
            raise ValueError(
                f"placeholder id {token} ({kind}) is the ordinary token {text!r} of the tokenizer in {self.folder}, "
                "which text can split or merge; conversations need a special (added) token there, e.g. a "
                "placeholder given by string (placeholder: '<image>'), which mimo adds"
            )
        return str(text)

    def _ids(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as error:  # jinja's TemplateError (raise_exception in templates) or transformers' checks
            roles = [m["role"] for m in messages]
            raise ValueError(f"the chat template of {self.folder} cannot render roles {roles}: {error}") from None
        if not isinstance(text, str):
            raise ValueError(f"the chat template of {self.folder} rendered a {type(text).__name__}, not a string")
        return text

    def encode(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> EncodedChat:
        if not turns:
            raise ValueError("cannot encode a conversation without turns")
        marker_kinds = _marker_kinds(turns, self._markers)
        _check_item_tokens(item_tokens, len(marker_kinds))
        messages = [{"role": turn.role, "content": self._with_placeholders(turn.text)} for turn in turns]
        full_text = self._render(messages, False)
        ids = self._ids(full_text)
        mask = [False] * len(ids)
        turn_ends: list[int] = []
        for index, turn in enumerate(turns):
            end = self._prefix_length(messages[: index + 1], False, full_text, ids, f"turns 0..{index}")
            if turn.role == "assistant":
                start = self._answer_start(messages, index, full_text, ids, turn_ends[-1] if turn_ends else 0)
                for position in range(start, self._trim_trailing_space(ids, start, end)):
                    mask[position] = ids[position] not in self._kind_of_id
            turn_ends.append(end)
        return _expand(ids, mask, turn_ends, self._kind_of_id, marker_kinds, item_tokens)

    def prompt(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> tuple[list[int], set[int]]:
        """Token ids of ``turns`` followed by the template's generation prompt (markers expanded), and the ids
        that end an answer (the tokenizer's special tokens: its end-of-turn and end-of-text)."""
        marker_kinds = _marker_kinds(turns, self._markers)
        _check_item_tokens(item_tokens, len(marker_kinds))
        messages = [{"role": turn.role, "content": self._with_placeholders(turn.text)} for turn in turns]
        ids = self._ids(self._render(messages, True))
        expanded = _expand(ids, [False] * len(ids), [len(ids)], self._kind_of_id, marker_kinds, item_tokens)
        return expanded.input_ids, set(self._tokenizer.all_special_ids) - set(self._kind_of_id)

    def decode_answer(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    def _answer_start(
        self, messages: list[dict[str, str]], index: int, full_text: str, ids: list[int], previous_end: int
    ) -> int:
        """Index of assistant turn ``index``'s first token: the length of the earlier turns + generation prompt."""
        if index == 0:
            raise ValueError(
                "the conversation opens with an assistant turn; a chat template renders no prompt before it, so its "
                "answer cannot be told from the template's role header"
            )
        start = self._prefix_length(messages[:index], True, full_text, ids, f"turns 0..{index - 1} + prompt")
        if start < previous_end:
            raise ValueError(
                f"the chat template of {self.folder} renders turns 0..{index - 1} with the generation prompt shorter "
                "than without it; the assistant tokens cannot be located"
            )
        return start

    def _with_placeholders(self, text: str) -> str:
        """``text`` with each marker replaced by its placeholder token's string."""
        if self._marker_pattern is None:
            return text
        return self._marker_pattern.sub(lambda match: self._by_marker[match.group(0)], text)

    def _prefix_length(
        self, messages: list[dict[str, str]], generation_prompt: bool, full_text: str, full_ids: list[int], what: str
    ) -> int:
        """Number of tokens of a prefix rendering, after checking it is a prefix of the whole, in text and tokens."""
        text = self._render(messages, generation_prompt)
        if not full_text.startswith(text):
            raise ValueError(
                f"the chat template of {self.folder} is not prefix-stable: {what} render as {text[-60:]!r} at the end, "
                f"which is not how the whole conversation starts ({full_text[: len(text)][-60:]!r}); the assistant "
                "tokens cannot be located"
            )
        ids = self._ids(text)
        if full_ids[: len(ids)] != ids:
            boundary = full_text[max(0, len(text) - 20) : len(text) + 20]
            raise ValueError(
                f"the tokens of {what} are not a prefix of the whole conversation's tokens: the text around the "
                f"boundary ({boundary!r}) tokenizes differently when cut there (e.g. whitespace at the start of a turn "
                "merging with the template's)"
            )
        return len(ids)

    def _trim_trailing_space(self, ids: list[int], start: int, stop: int) -> int:
        """``stop`` moved back over ordinary whitespace-only tokens (the separator after an end-of-turn token)."""
        while stop > start and ids[stop - 1] not in self._special_ids:
            if self._tokenizer.decode([ids[stop - 1]]).strip():
                break
            stop -= 1
        return stop


def _add_tokens(tokenizer: Any, added_tokens: dict[str, int], folder: str) -> None:
    """Add mimo's placeholder tokens as the export does (special, not normalized), in id order; check the ids."""
    if not added_tokens:
        return
    from tokenizers import AddedToken

    ordered = sorted(added_tokens, key=lambda text: added_tokens[text])
    tokenizer.add_tokens([AddedToken(text, special=True, normalized=False) for text in ordered])
    got = {text: tokenizer.convert_tokens_to_ids(text) for text in ordered}
    if got != added_tokens:
        raise ValueError(
            f"adding {added_tokens} to the tokenizer in {folder} numbered them {got}; the model config expects "
            f"the former (the tokenizer has {len(tokenizer)} tokens)"
        )


class BuiltinChatTokenizer:
    """A fixed byte-level chat format for the built-in language models, which have ids but no tokenizer.

    The free ids (not padding, not reserved, not placeholders) are, in order: a role tag for system, user and
    assistant, an end-of-turn id, then the text ids; a UTF-8 byte ``b`` is the text id ``b % len(text ids)``
    (lossless from 256 text ids up, a deterministic hash below, which a tiny model can still learn). A turn is
    ``[role tag] text [end]``; an assistant turn's text and end id are the targets.
    """

    def __init__(
        self,
        vocab_size: int,
        reserved_ids: Collection[int],
        placeholder_ids: Mapping[str, int],
        markers: Mapping[str, str] = DEFAULT_MARKERS,
    ) -> None:
        self._markers = _check_placeholders(placeholder_ids, markers)
        for kind, token in placeholder_ids.items():
            if not 0 <= token < vocab_size:
                raise ValueError(f"placeholder id {token} ({kind}) must be in [0, vocab_size={vocab_size})")
        reserved = {PAD_TOKEN_ID, *reserved_ids, *placeholder_ids.values()}
        free = [token for token in range(vocab_size) if token not in reserved]
        if len(free) < 5:
            raise ValueError(
                f"vocab_size={vocab_size} leaves {len(free)} ids free of padding, placeholders and reserved ids "
                f"{sorted(reserved)}; the built-in chat format needs at least 5 (3 role tags, an end id, text)"
            )
        self.role_ids: dict[str, int] = {"system": free[0], "user": free[1], "assistant": free[2]}
        self.end_id = free[3]
        self.text_ids = free[4:]
        self._placeholder_ids = dict(placeholder_ids)
        self._kind_of_id = {token: kind for kind, token in placeholder_ids.items()}
        self._marker_pattern = _marker_regex(list(self._markers.values()))
        self._kind_of_marker = {string: kind for kind, string in self._markers.items()}

    @property
    def lossless(self) -> bool:
        """Whether every byte has its own id (``decode`` gives the text back)."""
        return len(self.text_ids) >= 256

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text (markers not interpreted)."""
        size = len(self.text_ids)
        return [self.text_ids[byte % size] for byte in text.encode("utf-8")]

    def encode(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> EncodedChat:
        if not turns:
            raise ValueError("cannot encode a conversation without turns")
        marker_kinds = _marker_kinds(turns, self._markers)
        _check_item_tokens(item_tokens, len(marker_kinds))
        ids: list[int] = []
        mask: list[bool] = []
        turn_ends: list[int] = []
        for turn in turns:
            target = turn.role == "assistant"
            ids.append(self.role_ids[turn.role])
            mask.append(False)
            position = 0
            matches = self._marker_pattern.finditer(turn.text) if self._marker_pattern is not None else ()
            for match in matches:
                text = self.encode_text(turn.text[position : match.start()])
                ids += text
                mask += [target] * len(text)
                ids.append(self._placeholder_ids[self._kind_of_marker[match.group(0)]])
                mask.append(False)
                position = match.end()
            text = self.encode_text(turn.text[position:]) + [self.end_id]
            ids += text
            mask += [target] * len(text)
            turn_ends.append(len(ids))
        return _expand(ids, mask, turn_ends, self._kind_of_id, marker_kinds, item_tokens)

    def prompt(self, turns: Sequence[Turn], item_tokens: Sequence[int]) -> tuple[list[int], set[int]]:
        """Token ids of ``turns`` followed by the assistant's role tag, and the id that ends an answer."""
        return self.encode(turns, item_tokens).input_ids + [self.role_ids["assistant"]], {self.end_id}

    def decode_answer(self, ids: Sequence[int]) -> str:
        return self.decode(ids) if self.lossless else " ".join(map(str, ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text: role tags as ``<|role|>``, the end id as ``<|end|>``, each placeholder as its marker.

        Raises ValueError unless ``lossless`` (with fewer text ids, bytes share ids and cannot be told apart).
        """
        if not self.lossless:
            raise ValueError(f"only {len(self.text_ids)} text ids (< 256): bytes share ids, text cannot be decoded")
        names = {token: f"<|{role}|>" for role, token in self.role_ids.items()}
        names[self.end_id] = "<|end|>"
        names.update({token: self._markers[kind] for token, kind in self._kind_of_id.items()})
        byte_of = {token: byte for byte, token in enumerate(self.text_ids[:256])}
        parts: list[str] = []
        pending = bytearray()
        for token in ids:
            if token in byte_of:
                pending.append(byte_of[token])
                continue
            parts.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            if token not in names:
                raise ValueError(f"id {token} is not an id of the built-in chat format")
            parts.append(names[token])
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)
