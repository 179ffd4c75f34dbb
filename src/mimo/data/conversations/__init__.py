"""Conversation data (``data.source: conversations``): LLaVA-style records pointing at image and audio files.

``records`` reads and checks the records (pure, no torch); ``tokenize`` turns their turns into token ids with the
markers expanded to placeholder rows and a mask of the assistant answers.
"""

from __future__ import annotations

from mimo.data.conversations.records import (
    DEFAULT_MARKERS,
    MEDIA_KINDS,
    Conversation,
    MediaItem,
    MediaKind,
    RecordError,
    Role,
    Turn,
    find_markers,
    parse_record,
    read_records,
)
from mimo.data.conversations.tokenize import BuiltinChatTokenizer, ChatTokenizer, EncodedChat, HFChatTokenizer

__all__ = [
    "DEFAULT_MARKERS",
    "MEDIA_KINDS",
    "BuiltinChatTokenizer",
    "ChatTokenizer",
    "Conversation",
    "EncodedChat",
    "HFChatTokenizer",
    "MediaItem",
    "MediaKind",
    "RecordError",
    "Role",
    "Turn",
    "find_markers",
    "parse_record",
    "read_records",
]
