"""Conversation records (LLaVA / chat style JSON or JSONL) read and checked into ``Conversation`` objects.

Pure (json and pathlib only): a data set of hundreds of thousands of records must be checked, and a bad record
named with its id and the problem, before any tokenizer, image or audio file is touched. Media files themselves
are not opened here; the media loader reports a missing or unreadable file.

Two record styles are accepted, one per turn::

    {"id": "a1", "image": "coco/1.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}
    {"id": "b2", "audio": ["clips/1.wav"],
     "conversations": [{"role": "user", "content": "<audio> says?"}, {"role": "assistant", "content": "Hi."}]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_MARKERS",
    "MEDIA_KINDS",
    "Conversation",
    "MediaItem",
    "MediaKind",
    "RecordError",
    "Role",
    "Turn",
    "find_markers",
    "parse_record",
    "read_records",
]

Role = Literal["system", "user", "assistant"]
MediaKind = Literal["image", "audio"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("image", "audio")

DEFAULT_MARKERS: Mapping[MediaKind, str] = {"image": "<image>", "audio": "<audio>"}
"""The strings that stand for one media item in a turn's text (LLaVA's ``<image>``)."""

_FROM_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
"""LLaVA/ShareGPT ``from`` values (and the chat names, which converters often write there too)."""
_ROLE_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}

_MEDIA_KEYS: tuple[tuple[MediaKind, str, str], ...] = (("image", "image", "images"), ("audio", "audio", "audios"))
"""Per kind: the key that takes a path or a list of paths, and the plural key that takes a list."""


@dataclass(frozen=True)
class Turn:
    """One message; ``text`` still holds the media markers (expanded only when tokenized)."""

    role: Role
    text: str


@dataclass(frozen=True)
class MediaItem:
    """One image or audio clip: an absolute path inside the media root (not checked to exist)."""

    kind: MediaKind
    path: Path


@dataclass(frozen=True)
class Conversation:
    """A checked record: ``media[k]`` belongs to the k-th marker occurrence in the turns' text (all kinds)."""

    id: str
    turns: tuple[Turn, ...]
    media: tuple[MediaItem, ...]


class RecordError(ValueError):
    """A record that cannot be used, with its id, so a data set with a bad record can name it and go on."""

    def __init__(self, record_id: str, message: str) -> None:
        # Both in args, so the error survives pickling (DataLoader workers send exceptions to the main process).
        super().__init__(record_id, message)
        self.record_id = record_id
        self.message = message

    def __str__(self) -> str:
        return f"record {self.record_id}: {self.message}"


def read_records(path: Path) -> list[tuple[str, dict[str, Any] | RecordError]]:
    """Every record of a ``.json`` list or a ``.jsonl`` file, with its id, in file order.

    A record that is not a JSON object (or a JSONL line that is not JSON) is returned as a ``RecordError`` in its
    place, so one bad line does not stop the reading and the caller decides whether to skip or fail. The id is the
    record's ``"id"`` (a string or an integer), else ``"#<index>"`` (JSON) or ``"line <n>"`` (JSONL, 1-based).

    Raises:
        ValueError: the file cannot be read, has another suffix, or a ``.json`` file is not a JSON list.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"conversation file {path} must end in .json (a list of records) or .jsonl (one per line)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read conversation file {path}: {error}") from None
    if suffix == ".json":
        return _read_json_list(path, text)
    return _read_json_lines(text)


def _read_json_list(path: Path, text: str) -> list[tuple[str, dict[str, Any] | RecordError]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"conversation file {path} is not valid JSON: {error}") from None
    if not isinstance(data, list):
        raise ValueError(
            f"conversation file {path} must hold a JSON list of records, got a {_json_type(data)} "
            "(use .jsonl for one record per line)"
        )
    return [_identified(item, f"#{index}") for index, item in enumerate(data)]


def _read_json_lines(text: str) -> list[tuple[str, dict[str, Any] | RecordError]]:
    records: list[tuple[str, dict[str, Any] | RecordError]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"is not valid JSON ({error.msg} at column {error.colno})"
            records.append((f"line {number}", RecordError(f"line {number}", message)))
            continue
        records.append(_identified(item, f"line {number}"))
    return records


def _identified(item: Any, fallback_id: str) -> tuple[str, dict[str, Any] | RecordError]:
    if not isinstance(item, dict):
        return fallback_id, RecordError(fallback_id, f"is not a JSON object but a {_json_type(item)}")
    record_id = item.get("id")
    if (isinstance(record_id, str) and record_id) or (isinstance(record_id, int) and not isinstance(record_id, bool)):
        return str(record_id), item
    return fallback_id, item


def parse_record(
    record_id: str,
    record: Any,
    *,
    root: Path,
    markers: Mapping[str, str] = DEFAULT_MARKERS,
) -> Conversation:
    """Check one record and return its ``Conversation``; media paths are resolved under ``root``.

    ``markers`` maps each media kind the caller can use to its marker string; media of another kind is an error,
    so a record with audio is refused by a run without an audio modality. Media of a kind whose marker appears
    nowhere in the text gets one ``"<marker>\\n"`` per item at the start of the first user turn, as LLaVA does;
    otherwise each kind's marker count must equal its item count. Media follow the markers' text order.

    Raises:
        RecordError: anything that makes the record unusable for training (the message says what).
        ValueError: ``markers`` itself is bad (a caller error, not the record's).
    """
    _check_markers(markers)
    if not isinstance(record, dict):
        raise RecordError(record_id, f"is not a JSON object but a {_json_type(record)}")
    turns = _parse_turns(record_id, record)
    paths = _parse_media(record_id, record, Path(root), markers)
    turns = _place_markers(record_id, turns, paths, markers)
    media = _order_media(turns, paths, markers)
    return Conversation(id=str(record_id), turns=tuple(turns), media=tuple(media))


def find_markers(text: str, markers: Mapping[str, str]) -> list[str]:
    """The kinds of the markers in ``text``, in order of appearance (a longer marker wins over its own prefix)."""
    if not markers:
        return []
    by_string = {string: kind for kind, string in markers.items()}
    pattern = "|".join(re.escape(s) for s in sorted(by_string, key=len, reverse=True))
    return [by_string[match.group(0)] for match in re.finditer(pattern, text)]


def _check_markers(markers: Mapping[str, str]) -> None:
    unknown = [kind for kind in markers if kind not in MEDIA_KINDS]
    if unknown:
        raise ValueError(f"markers has unknown media kinds {unknown}; the kinds are {list(MEDIA_KINDS)}")
    for kind, string in markers.items():
        if not isinstance(string, str) or not string.strip():
            raise ValueError(f"markers[{kind!r}]={string!r} must be a non-empty string such as '<{kind}>'")
    strings = list(markers.values())
    if len(set(strings)) != len(strings):
        raise ValueError(f"markers must differ per kind, got {dict(markers)}")


def _parse_turns(record_id: str, record: dict[str, Any]) -> list[Turn]:
    raw = record.get("conversations")
    if raw is None:
        raise RecordError(record_id, f"has no 'conversations' (keys: {sorted(record)})")
    if not isinstance(raw, list):
        raise RecordError(record_id, f"'conversations' must be a list of turns, got a {_json_type(raw)}")
    if not raw:
        raise RecordError(record_id, "'conversations' is empty")
    turns = [_parse_turn(record_id, index, item) for index, item in enumerate(raw)]
    if not any(turn.role == "assistant" for turn in turns):
        roles = [turn.role for turn in turns]
        raise RecordError(record_id, f"has no assistant turn to train on (roles: {roles})")
    return turns


def _parse_turn(record_id: str, index: int, item: Any) -> Turn:
    where = f"turn {index}"
    if not isinstance(item, dict):
        raise RecordError(record_id, f"{where} is not an object but a {_json_type(item)}")
    llava = [key for key in ("from", "value") if key in item]
    chat = [key for key in ("role", "content") if key in item]
    if llava and chat:
        raise RecordError(record_id, f"{where} mixes {llava} with {chat}: use 'from'/'value' or 'role'/'content'")
    if not llava and not chat:
        raise RecordError(record_id, f"{where} has neither 'from'/'value' nor 'role'/'content' (keys: {sorted(item)})")
    role_key, text_key, roles = ("from", "value", _FROM_ROLES) if llava else ("role", "content", _ROLE_ROLES)
    for key, other in ((role_key, text_key), (text_key, role_key)):
        if key not in item:
            raise RecordError(record_id, f"{where} has {other!r} but no {key!r}")
    role = item[role_key]
    if not isinstance(role, str) or role not in roles:
        raise RecordError(record_id, f"{where} has {role_key}={role!r}; expected one of {sorted(roles)}")
    text = item[text_key]
    if not isinstance(text, str):
        raise RecordError(record_id, f"{where} {text_key!r} must be a string, got a {_json_type(text)}")
    return Turn(role=roles[role], text=text)


def _parse_media(
    record_id: str, record: dict[str, Any], root: Path, markers: Mapping[str, str]
) -> dict[str, list[Path]]:
    """Resolved paths per kind, in the record's order."""
    root = root.resolve()
    paths: dict[str, list[Path]] = {}
    for kind, single_key, list_key in _MEDIA_KEYS:
        given = [key for key in (single_key, list_key) if record.get(key) is not None]
        if len(given) > 1:
            raise RecordError(record_id, f"gives both {single_key!r} and {list_key!r}; use one")
        if not given:
            continue
        key = given[0]
        value = record[key]
        if isinstance(value, str) and key == single_key:
            value = [value]
        if not isinstance(value, list):
            expected = "a path or a list of paths" if key == single_key else "a list of paths"
            raise RecordError(record_id, f"{key!r} must be {expected}, got a {_json_type(value)}")
        if not value:
            continue
        if kind not in markers:
            raise RecordError(
                record_id,
                f"has {len(value)} {kind} item(s), but this data set takes only {' and '.join(markers) or 'no'} media",
            )
        paths[kind] = [_resolve_media_path(record_id, f"{key}[{i}]", item, root) for i, item in enumerate(value)]
    return paths


def _resolve_media_path(record_id: str, where: str, value: Any, root: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(record_id, f"{where}={value!r} must be a non-empty path string")
    relative = Path(value)
    if relative.is_absolute() or relative.drive:
        raise RecordError(record_id, f"{where}={value!r} is absolute; media paths must be relative to {root}")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise RecordError(record_id, f"{where}={value!r} leads outside the media root {root} (to {resolved})")
    return resolved


def _place_markers(
    record_id: str, turns: list[Turn], paths: dict[str, list[Path]], markers: Mapping[str, str]
) -> list[Turn]:
    """Check marker counts against media counts, adding LLaVA-style leading markers for kinds with none."""
    counts = {kind: 0 for kind in markers}
    for turn in turns:
        for kind in find_markers(turn.text, markers):
            counts[kind] += 1
    missing = [kind for kind in markers if paths.get(kind) and counts[kind] == 0]
    for kind in markers:
        items = len(paths.get(kind, []))
        if kind not in missing and counts[kind] != items:
            raise RecordError(
                record_id,
                f"has {counts[kind]} {markers[kind]!r} marker(s) in its text but {items} {kind} item(s); "
                "they must match (or give no marker, to put them all before the first user message)",
            )
    if not missing:
        return turns
    first_user = next((index for index, turn in enumerate(turns) if turn.role == "user"), None)
    if first_user is None:
        raise RecordError(
            record_id, f"has {' and '.join(missing)} media without markers and no user turn to put them in"
        )
    prefix = "".join(f"{markers[kind]}\n" * len(paths[kind]) for kind in missing)
    turn = turns[first_user]
    return [*turns[:first_user], Turn(role=turn.role, text=prefix + turn.text), *turns[first_user + 1 :]]


def _order_media(turns: list[Turn], paths: dict[str, list[Path]], markers: Mapping[str, str]) -> list[MediaItem]:
    """Media in marker order: the n-th marker of a kind takes that kind's n-th path (counts already match)."""
    remaining = {kind: iter(items) for kind, items in paths.items()}
    return [
        MediaItem(kind=kind, path=next(remaining[kind]))  # type: ignore[arg-type]
        for turn in turns
        for kind in find_markers(turn.text, markers)
    ]


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages about data (not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
