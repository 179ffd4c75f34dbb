"""``ConversationDataset``: conversation records as training samples, each rank decoding only what it uses.

Before training, one pass over the records (``build_index``) decides which records train: a record that does
not parse, names a missing or corrupt file (checked without decoding), does not fit ``max_seq_length`` (after cutting whole trailing turns when
allowed) or has no assistant answer left is set aside and counted. The pass tokenizes and reads media *headers*
only (an image's presence, an audio clip's number of frames), so it runs on a language-model rank; its result is
the same for every rank, so all ranks agree on the sample order. Then ``load_sample`` builds only the parts a
rank asks for: the text fields (tokenization) for language ranks, the media of one modality (decoding) for that
encoder's ranks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mimo.data.conversations.media import MediaError, MediaLoader
from mimo.data.conversations.records import (
    DEFAULT_MARKERS,
    Conversation,
    MediaItem,
    RecordError,
    parse_record,
    read_records,
)
from mimo.data.conversations.tokenize import BuiltinChatTokenizer, ChatTokenizer, EncodedChat, HFChatTokenizer
from mimo.data.format import IGNORE_INDEX, INPUT_IDS, LABELS, LOSS_MASK, MODALITY_INPUTS, POSITION_IDS, Sample
from mimo.data.synthetic_config import SyntheticDataConfig
from mimo.model.configs import PAD_TOKEN_ID, MimoModelConfig
from mimo.model.hf.language_config import HFLanguageConfig

__all__ = ["ConversationDataset", "ConversationIndex", "kind_of_modalities"]

_KIND_OF_INPUT = {"vision": "image", "audio": "audio"}


def kind_of_modalities(model_config: MimoModelConfig) -> dict[str, str]:
    """``{media kind: modality}``: records name media by kind (``image``, ``audio``), the model by modality."""
    modalities: dict[str, str] = {}
    for name, modality in model_config.modalities.items():
        if len(modality.encoders) != 1:
            # Several encoders emit a sample's rows encoder by encoder, not item by item: the rows of a sample
            # with several items would not line up with its markers.
            raise ValueError(f"modality {name!r} has {len(modality.encoders)} encoders; conversation data needs one")
        kind = _KIND_OF_INPUT[next(iter(modality.encoders.values())).input_kind]
        if kind in modalities:
            raise ValueError(
                f"modalities {modalities[kind]!r} and {name!r} both take {kind}s; conversation records name media "
                "by kind only, so a model for them has one modality per kind"
            )
        modalities[kind] = name
    return modalities


@dataclass
class ConversationIndex:
    """Which records train (and how many turns of each), and why the others do not."""

    kept: list[int] = field(default_factory=list)
    """Positions (in the records file) of the records that train, in file order."""
    turns: list[int] = field(default_factory=list)
    """Per kept record, how many of its turns are used (fewer than all when it was cut to fit)."""
    lengths: list[int] = field(default_factory=list)
    """Per kept record, its tokens before padding."""
    truncated: int = 0
    dropped_too_long: int = 0
    problems: list[str] = field(default_factory=list)
    """One line per record that cannot be used (bad record, missing media, too long), with its id."""
    tokens: int = 0
    """Tokens of the kept samples, before padding."""

    def summary(self) -> str:
        return (f"{len(self.kept)} samples ({self.tokens} tokens); {self.truncated} cut to fit; "
                f"{len(self.problems)} not usable, {self.dropped_too_long} of them too long")


class ConversationDataset(Dataset[Sample]):
    """The records of ``path`` (or the subset ``positions`` of them) as samples padded to ``max_seq_length``."""

    def __init__(
        self, config: SyntheticDataConfig, model_config: MimoModelConfig, *, path: str | None = None,
        positions: Collection[int] | None = None,
    ) -> None:
        path = path or config.path
        assert path is not None and config.max_seq_length is not None, "the data config checks these"
        self.path = Path(path)
        self.config, self.model_config = config, model_config
        self.seq_length = config.max_seq_length
        self.modality_of = kind_of_modalities(model_config)
        self.markers = {kind: DEFAULT_MARKERS[kind] for kind in self.modality_of}  # type: ignore[index]
        root = Path(config.root) if config.root else self.path.parent
        records = read_records(self.path)
        wanted = range(len(records)) if positions is None else sorted(positions)
        self.record_ids = [records[i][0] for i in wanted]
        self.conversations: list[Conversation | RecordError] = [self._parse(*records[i], root) for i in wanted]
        self.index: ConversationIndex | None = None
        self._tokenizer: ChatTokenizer | None = None
        self._media: dict[tuple[str, str], MediaLoader] = {}

    def _parse(self, record_id: str, record: object, root: Path) -> Conversation | RecordError:
        if isinstance(record, RecordError):
            return record
        try:
            return parse_record(record_id, record, root=root, markers=self.markers)
        except RecordError as error:
            return error

    # the pass that decides what trains ------------------------------------------------------------------
    def build_index(self) -> ConversationIndex:
        """Tokenize every record (media headers only) and keep what fits; the same result on every rank."""
        index = ConversationIndex()
        for position, conversation in enumerate(self.conversations):
            try:
                if isinstance(conversation, RecordError):
                    raise conversation
                for item in conversation.media:  # structure and headers only: no rank decodes here
                    modality = self.modality_of[item.kind]
                    for encoder in self.model_config.modalities[modality].encoders:
                        self._loader(modality, encoder).verify(item.path)
                turns, encoded = self._fit(conversation)
            except (RecordError, MediaError) as error:
                index.problems.append(self._describe(position, error))
                continue
            except ValueError as error:  # the tokenizer refused the conversation
                index.problems.append(self._describe(position, RecordError(self.record_ids[position], str(error))))
                continue
            if turns is None:
                index.dropped_too_long += 1
                index.problems.append(
                    f"{self.path}: record {self.record_ids[position]}: too long for max_seq_length="
                    f"{self.seq_length} (data.overlong={self.config.overlong})"
                )
                continue
            index.truncated += turns < len(conversation.turns)
            index.kept.append(position)
            index.turns.append(turns)
            index.lengths.append(len(encoded.input_ids))
            index.tokens += len(encoded.input_ids)
        return index

    def _describe(self, position: int, error: Exception) -> str:
        text = str(error)
        prefix = f"record {self.record_ids[position]}"
        return f"{self.path}: {text if text.startswith(prefix) else f'{prefix}: {text}'}"

    def _fit(self, conversation: Conversation) -> tuple[int | None, EncodedChat]:
        """How many turns fit in ``max_seq_length`` (None: none do) and their encoding."""
        encoded = self._encode(conversation, len(conversation.turns))
        if len(encoded.input_ids) <= self.seq_length:
            return len(conversation.turns), encoded
        if self.config.overlong == "truncate":
            for turns in range(len(conversation.turns) - 1, 0, -1):
                if conversation.turns[turns - 1].role != "assistant":
                    continue  # cut after an answer: a trailing question would train nothing
                shorter = self._encode(conversation, turns)
                if len(shorter.input_ids) <= self.seq_length:
                    return turns, shorter
        return None, encoded

    def set_index(self, index: ConversationIndex, *, checking: bool = False) -> None:
        """Use ``index`` (built here or on another rank); with ``on_bad_sample: error`` a problem stops here.

        ``checking`` (``mimo data check``): accept any index, one sample per row, to look at every record.
        """
        if checking:
            self.index, self.rows = index, [[i] for i in range(len(index.kept))]
            return
        if index.problems and self.config.on_bad_sample == "error":
            raise ValueError(
                f"{index.problems[0]} (data.on_bad_sample=error; {len(index.problems)} records cannot be used: "
                "`mimo data check` lists them, data.on_bad_sample=skip leaves them out)"
            )
        if not index.kept:
            raise ValueError(f"{self.path}: no record can be used ({len(index.problems)} problems)")
        self.index = index
        self.rows = self._pack(index) if self.config.packing else [[i] for i in range(len(index.kept))]

    def _pack(self, index: ConversationIndex) -> list[list[int]]:
        """Consecutive kept samples, as many per row as fit in max_seq_length (the order stays the same)."""
        rows: list[list[int]] = []
        used = self.seq_length
        for sample, length in enumerate(index.lengths):
            if used + length > self.seq_length:
                rows.append([])
                used = 0
            rows[-1].append(sample)
            used += length
        return rows

    def padding_summary(self) -> str:
        """Padding tokens with and without packing (the share of each row that trains nothing)."""
        index = self._require_index()
        unpacked = len(index.kept) * self.seq_length - index.tokens
        packed = len(self.rows) * self.seq_length - index.tokens
        return (f"packing: {len(index.kept)} samples in {len(self.rows)} rows; padding {packed} tokens instead of "
                f"{unpacked} ({1 - packed / max(unpacked, 1):.0%} saved)")

    # samples ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._require_index()
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        return self.load_sample(index)

    def load_sample(
        self, index: int, *, modalities: Collection[str] | None = None, include_text: bool = True
    ) -> Sample:
        """Row ``index`` (one sample, or several when packing): the text fields only when asked, the media of
        ``modalities`` (None: all)."""
        self._require_index()
        members = self.rows[index]
        media = [item for member in members for item in self.media_of(member)]
        sample: Sample = {}
        if include_text:
            sample.update(self._text_fields([self._encode_sample(member) for member in members]))
        selected = list(self.modality_of.values()) if modalities is None else list(modalities)
        inputs = {}
        for kind, modality in self.modality_of.items():
            if modality not in selected:
                continue
            paths = [item.path for item in media if item.kind == kind]
            try:
                inputs[modality] = {
                    encoder: self._loader(modality, encoder).encoder_inputs(paths)
                    for encoder in self.model_config.modalities[modality].encoders
                }
            except MediaError as error:
                ids = ", ".join(self.record_ids[self._require_index().kept[m]] for m in members)
                raise ValueError(f"{self.path}: record {ids}: {error}") from None
        sample[MODALITY_INPUTS] = inputs
        return sample

    def media_of(self, index: int) -> list[MediaItem]:
        """The media items sample ``index`` uses (those of the turns it keeps)."""
        kept = self._require_index()
        conversation = self.conversations[kept.kept[index]]
        assert isinstance(conversation, Conversation)
        return self._media_in(conversation, kept.turns[index])

    def _require_index(self) -> ConversationIndex:
        if self.index is None:
            raise RuntimeError("ConversationDataset: call build_index() and set_index() before reading samples")
        return self.index

    def _text_fields(self, pieces: list[EncodedChat]) -> dict[str, torch.Tensor]:
        """One row: the samples one after the other, each with position ids from 0, padded to max_seq_length.

        ``labels[i] = input_ids[i + 1]`` where token i + 1 is an assistant target of the same sample (a sample's
        last token predicts nothing, so no label crosses into the next sample).
        """
        input_ids = torch.full((self.seq_length,), PAD_TOKEN_ID, dtype=torch.long)
        labels = torch.full((self.seq_length,), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.arange(self.seq_length, dtype=torch.long)
        start = 0
        for encoded in pieces:
            length = len(encoded.input_ids)
            ids = torch.tensor(encoded.input_ids, dtype=torch.long)
            target = torch.tensor(encoded.assistant_mask[1:], dtype=torch.bool)
            input_ids[start : start + length] = ids
            labels[start : start + length - 1] = torch.where(target, ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
            position_ids[start : start + length] = torch.arange(length)
            start += length
        # Padding continues the last sample's positions, so it starts no sequence of its own.
        last = len(pieces[-1].input_ids)
        position_ids[start:] = torch.arange(last, last + self.seq_length - start)
        return {
            INPUT_IDS: input_ids,
            LABELS: labels,
            LOSS_MASK: (labels != IGNORE_INDEX).to(torch.float32),
            POSITION_IDS: position_ids,
        }

    def _encode_sample(self, sample: int) -> EncodedChat:
        index = self._require_index()
        conversation = self.conversations[index.kept[sample]]
        assert isinstance(conversation, Conversation)
        return self._encode(conversation, index.turns[sample])

    # tokens and media ---------------------------------------------------------------------------------
    def _encode(self, conversation: Conversation, turns: int) -> EncodedChat:
        media = self._media_in(conversation, turns)
        item_tokens = [self._tokens_of(item.kind, item.path) for item in media]
        return self.tokenizer.encode(conversation.turns[:turns], item_tokens)

    def _media_in(self, conversation: Conversation, turns: int) -> list[MediaItem]:
        """The media whose markers are in the first ``turns`` turns (media follow the markers' text order)."""
        count = sum(sum(turn.text.count(marker) for marker in self.markers.values())
                    for turn in conversation.turns[:turns])
        return list(conversation.media[:count])

    def _tokens_of(self, kind: str, path: Path) -> int:
        """Placeholder rows of one item: the sum over its modality's encoders (read from headers only)."""
        modality = self.modality_of[kind]
        return sum(self._loader(modality, encoder).tokens_of(path)
                   for encoder in self.model_config.modalities[modality].encoders)

    def _loader(self, modality: str, encoder: str) -> MediaLoader:
        key = (modality, encoder)
        if key not in self._media:
            self._media[key] = MediaLoader(self.model_config.modalities[modality].encoders[encoder])
        return self._media[key]

    @property
    def media_decoded(self) -> int:
        """Media files this dataset decoded (tests check that language ranks decode none)."""
        return sum(loader.decoded for loader in self._media.values())

    @property
    def tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            self._tokenizer = build_chat_tokenizer(self.model_config, self.markers)
        return self._tokenizer

    @property
    def tokenized(self) -> bool:
        """Whether this dataset ever tokenized (tests check that encoder ranks never do)."""
        return self._tokenizer is not None


def build_chat_tokenizer(model_config: MimoModelConfig, markers: Mapping[str, str]) -> ChatTokenizer:
    """The language model's own tokenizer and chat template, or the built-in format for built-in models."""
    modality_of = kind_of_modalities(model_config)
    placeholder_ids = {kind: model_config.placeholder_ids[modality] for kind, modality in modality_of.items()}
    language = model_config.language
    if isinstance(language, HFLanguageConfig):
        return HFChatTokenizer(language.hf, placeholder_ids, language.added_tokens, markers)  # type: ignore[attr-defined]
    return BuiltinChatTokenizer(language.vocab_size, (), placeholder_ids, markers)
