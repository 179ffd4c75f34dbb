"""The planning files never import torch.distributed, so they stay testable without processes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mimo

PURE_FILES = [
    "parallel/__init__.py",
    "parallel/layout.py",
    "parallel/topology.py",
    "comm/__init__.py",
    "comm/routing.py",
    "pipeline/__init__.py",
    "pipeline/actions.py",
    "pipeline/schedules.py",
    "pipeline/simulate.py",
]


def distributed_imports(source: str) -> list[str]:
    """Every import in ``source`` that reaches torch.distributed, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_distributed(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [name for name in names if _is_distributed(name)]
    return found


def _is_distributed(dotted: str) -> bool:
    return dotted == "torch.distributed" or dotted.startswith("torch.distributed.")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch.distributed as dist", ["torch.distributed"]),
        ("from torch import distributed", ["torch.distributed"]),
        ("from torch.distributed import send", ["torch.distributed.send"]),
        ("def f():\n    import torch.distributed.rpc", ["torch.distributed.rpc"]),
        ("import torch\nfrom torch import nn\nimport torch.distributions", []),
    ],
)
def test_checker_finds_distributed_imports(source: str, expected: list[str]) -> None:
    assert distributed_imports(source) == expected


@pytest.mark.parametrize("relative", PURE_FILES)
def test_planning_file_does_not_import_torch_distributed(relative: str) -> None:
    path = Path(mimo.__file__).parent / relative
    assert distributed_imports(path.read_text()) == []
