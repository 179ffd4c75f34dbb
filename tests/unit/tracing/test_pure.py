"""The planning and analysis files import neither torch nor matplotlib themselves (``mimo timeline`` and the
simulator stay light), and never torch.distributed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mimo
from tests.unit.parallel.test_pure_imports import distributed_imports

PURE = ["pipeline/timed.py", "tracing/recorder.py", "tracing/files.py", "tracing/analysis.py"]
HEAVY = ("torch", "matplotlib")


def _imported(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.append(node.module)
    return names


@pytest.mark.parametrize("relative", PURE)
def test_file_imports_nothing_heavy(relative: str) -> None:
    source = (Path(mimo.__file__).parent / relative).read_text()
    assert distributed_imports(source) == []
    assert [name for name in _imported(source) if name.split(".")[0] in HEAVY] == []
