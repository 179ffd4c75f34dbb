"""Reading a Hugging Face model folder's ``config.json`` without importing transformers (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_hf_config"]


def read_hf_config(folder: str, owner: str) -> dict[str, Any]:
    """The parsed ``config.json`` of ``folder``; ValueError naming ``owner`` and the folder when it is not one."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{owner}.hf={folder!r} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{owner}.hf={folder!r} is not a Hugging Face model folder (no config.json)")
    try:
        data = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{owner}.hf={folder!r}: config.json is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{owner}.hf={folder!r}: config.json does not hold a mapping")
    return data
