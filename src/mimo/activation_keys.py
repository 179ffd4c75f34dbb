"""How entries of the ``{name: tensor}`` dicts that stages exchange are named.

A module's activation is keyed by the module name (``"images"``, ``"language"``); an encoder of a modality with
several encoders, between its pipeline stages, by ``"<modality>:<encoder>"``. Entries whose key contains ``/``
are *metadata* (``"images/tokens_per_sample"``): integer tensors that travel with their activation and carry no
gradient. Module and encoder names therefore never contain ``/`` or ``:`` (the config rejects them).
"""

from __future__ import annotations

METADATA_SEPARATOR = "/"
MAX_KEY_BYTES = 64
"""Longest key the point-to-point dict transfer carries."""


def counts_key(module: str) -> str:
    """Key of the per-sample row counts that travel with ``module``'s activation."""
    return f"{module}{METADATA_SEPARATOR}tokens_per_sample"


def metadata_key(owner: str, name: str) -> str:
    return f"{owner}{METADATA_SEPARATOR}{name}"


def is_metadata_key(key: str) -> bool:
    return METADATA_SEPARATOR in key


def owner_of(key: str) -> str:
    """The activation a key belongs to: ``"images/tokens_per_sample"`` -> ``"images"``."""
    return key.split(METADATA_SEPARATOR, 1)[0]
