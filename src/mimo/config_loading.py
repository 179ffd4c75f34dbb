"""Turn plain YAML data into typed dataclass trees, with errors that name the key and the value.

The rules are few and generic: a dataclass takes a mapping with known keys only; ``X | None`` accepts null;
``Literal`` accepts one of its values; ``list[T]`` and ``dict[str, T]`` convert their items; a union of
dataclasses picks the member whose ``kind`` default equals the mapping's ``kind`` key, or without one the only
member whose fields cover the mapping's keys. Numbers are not coerced
from strings, and a bool is never accepted as a number.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


def build_dataclass(cls: type[T], data: Any, path: str = "") -> T:
    """Build ``cls`` from ``data`` (a mapping); raise ValueError naming ``path.key`` on any bad key or value."""
    if not isinstance(data, dict):
        raise ValueError(f"{_name(path)} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key {_join(path, unknown[0])!r}; expected one of: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = convert(hints[name], value, _join(path, name))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing key {_join(path, missing[0])!r}")
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{_name(path)}: {error}") if path else error


def convert(annotation: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to ``annotation`` or raise ValueError naming ``path`` and the value."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(get_args(annotation), value, path)
    if origin is Literal:
        if value not in get_args(annotation):
            choices = ", ".join(repr(c) for c in get_args(annotation))
            raise ValueError(f"{path}={value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path} must be a list, got {value!r}")
        (item_type,) = get_args(annotation)
        return [convert(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a mapping, got {value!r}")
        key_type, value_type = get_args(annotation)
        return {convert(key_type, k, path): convert(value_type, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    return _convert_scalar(annotation, value, path)


def _convert_union(members: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise ValueError(f"{path} must not be null")
    members = tuple(m for m in members if m is not type(None))
    if len(members) == 1:
        return convert(members[0], value, path)
    families = [m for m in members if dataclasses.is_dataclass(m)]
    if families and len(families) == len(members):
        return build_dataclass(_pick_family(families, value, path), value, path)
    errors = []
    for member in members:
        try:
            return convert(member, value, path)
        except ValueError as error:
            errors.append(str(error))
    raise ValueError("; ".join(errors))


def _pick_family(members: list[Any], value: Any, path: str) -> Any:
    """The dataclass of a union that ``value`` describes: by its ``kind`` key, or by which fields it uses."""
    kinds = {_kind_of(m): m for m in members if _kind_of(m) is not None}
    if not isinstance(value, dict):
        raise ValueError(f"{_name(path)} must be a mapping, got {value!r}")
    if "kind" in value:
        if value["kind"] not in kinds:
            raise ValueError(f"{_join(path, 'kind')}={value['kind']!r} is not one of: {', '.join(sorted(kinds))}")
        return kinds[value["kind"]]
    # Without "kind": the only family whose fields cover every key ({hf: DIR} is a Hugging Face model), or the
    # default family (the one without a kind field, e.g. the built-in language model) when several do.
    covering = [m for m in members if set(value) <= {f.name for f in dataclasses.fields(m) if f.init}]
    if len(covering) == 1:
        return covering[0]
    defaults = [m for m in covering if _kind_of(m) is None]
    if defaults:
        return defaults[0]
    raise ValueError(f"{_name(path)} needs a 'kind' key, one of: {', '.join(sorted(kinds))}")


def _kind_of(cls: Any) -> str | None:
    for f in dataclasses.fields(cls):
        if f.name == "kind":
            return str(f.default)
    return None


def _convert_scalar(annotation: Any, value: Any, path: str) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config annotation {annotation!r} at {path}")
    raise ValueError(f"{path}={value!r} is not a valid {annotation.__name__}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(path: str) -> str:
    return path or "the config"
