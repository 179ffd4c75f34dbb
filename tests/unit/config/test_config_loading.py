"""The generic YAML -> dataclass conversion: unknown keys, bad values and unions named in the error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mimo.config_loading import build_dataclass


@dataclass(kw_only=True)
class _Cat:
    kind: Literal["cat"] = "cat"
    lives: int = 9


@dataclass(kw_only=True)
class _Dog:
    kind: Literal["dog"] = "dog"
    bark: str = "woof"


@dataclass(kw_only=True)
class _Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclass(kw_only=True)
class _Outer:
    count: int
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    inner: _Inner = field(default_factory=_Inner)
    pets: dict[str, _Cat | _Dog] = field(default_factory=dict)
    maybe: int | None = None


def test_builds_nested_values_and_discriminated_unions():
    built = build_dataclass(
        _Outer,
        {"count": 3, "inner": {"rate": 2, "names": ["x"]}, "pets": {"tom": {"kind": "cat"}, "rex": {"kind": "dog"}}},
    )
    assert built.count == 3 and built.inner.rate == 2.0 and isinstance(built.inner.rate, float)
    assert isinstance(built.pets["tom"], _Cat) and isinstance(built.pets["rex"], _Dog)
    assert built.maybe is None


def test_a_union_without_kind_takes_the_only_member_whose_fields_cover_the_keys():
    built = build_dataclass(_Outer, {"count": 1, "pets": {"tom": {"lives": 3}, "rex": {"bark": "grr"}}})
    assert isinstance(built.pets["tom"], _Cat) and built.pets["tom"].lives == 3
    assert isinstance(built.pets["rex"], _Dog) and built.pets["rex"].bark == "grr"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 1, "colour": 2}, "unknown key 'colour'"),
        ({"count": 1, "inner": {"rte": 1}}, "unknown key 'inner.rte'"),
        ({}, "missing key 'count'"),
        ({"count": "3"}, r"count='3' is not a valid int"),
        ({"count": True}, "count=True is not a valid int"),
        ({"count": 1.5}, "count=1.5 is not a valid int"),
        ({"count": 1, "flag": "yes"}, "flag='yes' is not a valid bool"),
        ({"count": 1, "mode": "c"}, "mode='c' is not one of 'a', 'b'"),
        ({"count": 1, "inner": {"rate": -1}}, "inner: rate must be >= 0, got -1.0"),
        ({"count": 1, "inner": {"names": "x"}}, "inner.names must be a list"),
        ({"count": 1, "pets": {"tom": {}}}, "pets.tom needs a 'kind' key"),
        ({"count": 1, "pets": {"tom": {"kind": "fish"}}}, "pets.tom.kind='fish' is not one of: cat, dog"),
        ({"count": 1, "pets": {"tom": {"kind": "cat", "bark": "x"}}}, "unknown key 'pets.tom.bark'"),
        ([1, 2], "the config must be a mapping"),
    ],
)
def test_errors_name_the_key_and_the_value(data, message):
    with pytest.raises(ValueError, match=message):
        build_dataclass(_Outer, data)
