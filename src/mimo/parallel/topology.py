"""The module graph: which module feeds which, and the pipeline depths and warmups derived from it.

Pure. A topology is a DAG of activation edges whose only sink is the language model, by default
``{modality: ["language"] for every modality} | {"language": []}``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from mimo.model.configs import LANGUAGE_MODULE
from mimo.parallel.layout import ModuleLayout

__all__ = ["Topology", "default_topology"]


@dataclass(frozen=True)
class Topology:
    """A DAG ``module -> successors`` with the language model as its single sink.

    ``edges`` must list every module as a key (the sink with no successors). Key order is kept and used to
    break ties, so every derived order is deterministic.
    """

    edges: Mapping[str, Sequence[str]]
    """Module -> its successors; stored as a dict of tuples."""

    def __post_init__(self) -> None:
        normalized = {module: tuple(successors) for module, successors in self.edges.items()}
        object.__setattr__(self, "edges", normalized)
        self._check_edges()
        cycle = self._find_cycle()
        if cycle:
            raise ValueError(f"topology has a cycle: {' -> '.join(cycle)}")
        if LANGUAGE_MODULE not in self.edges:
            raise ValueError(f"topology must contain {LANGUAGE_MODULE!r}, got modules {list(self.edges)}")
        if self.sinks != (LANGUAGE_MODULE,):
            raise ValueError(
                f"topology must have exactly one sink, {LANGUAGE_MODULE!r}; got sinks {list(self.sinks)}"
            )

    def _check_edges(self) -> None:
        for module, successors in self.edges.items():
            unknown = [name for name in successors if name not in self.edges]
            if unknown:
                raise ValueError(
                    f"topology edge {module} -> {unknown} names unknown modules; modules are {list(self.edges)}"
                )
            if len(set(successors)) != len(successors):
                raise ValueError(f"topology lists a successor of {module!r} twice: {list(successors)}")

    def _find_cycle(self) -> list[str]:
        """A cycle as ``[a, b, ..., a]``, or ``[]`` when the graph is acyclic."""
        state: dict[str, str] = {}  # module -> "open" while on the DFS path, "done" after

        def visit(module: str, path: list[str]) -> list[str]:
            state[module] = "open"
            for successor in self.edges[module]:
                if state.get(successor) == "open":
                    on_path = [*path, module]
                    return [*on_path[on_path.index(successor) :], successor]
                if successor not in state:
                    cycle = visit(successor, [*path, module])
                    if cycle:
                        return cycle
            state[module] = "done"
            return []

        for module in self.edges:
            if module not in state:
                cycle = visit(module, [])
                if cycle:
                    return cycle
        return []

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.edges)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(module for module, successors in self.edges.items() if not successors)

    def successors(self, module: str) -> tuple[str, ...]:
        self._require_known(module)
        return tuple(self.edges[module])

    def sources_of(self, module: str) -> tuple[str, ...]:
        """Modules with an edge into ``module``, in key order."""
        self._require_known(module)
        return tuple(name for name, successors in self.edges.items() if module in successors)

    def topological_order(self) -> tuple[str, ...]:
        """Sources first, the sink last; ties broken by key order."""
        order: list[str] = []
        remaining = {module: len(self.sources_of(module)) for module in self.edges}
        while remaining:
            ready = next(module for module, count in remaining.items() if count == 0)
            del remaining[ready]
            order.append(ready)
            for successor in self.edges[ready]:
                remaining[successor] -= 1
        return tuple(order)

    def require_modules(self, module_names: Collection[str]) -> None:
        """Raise ValueError unless the topology has exactly these modules."""
        extra = sorted(set(self.edges) - set(module_names))
        missing = sorted(set(module_names) - set(self.edges))
        if extra or missing:
            raise ValueError(
                f"topology modules {sorted(self.edges)} differ from {sorted(module_names)}: "
                f"extra in the topology {extra}, missing from the topology {missing}"
            )

    def _require_known(self, module: str) -> None:
        if module not in self.edges:
            raise ValueError(f"unknown module {module!r}; topology modules are {list(self.edges)}")

    def downstream_depth(self, module: str, layouts: Mapping[str, ModuleLayout]) -> int:
        """Number of stages after ``module`` on the longest path to the sink, weighted by pp."""
        successors = self.successors(module)
        if not successors:
            return 0
        return max(layouts[name].pp + self.downstream_depth(name, layouts) for name in successors)

    def remaining_depth(self, module: str, stage: int, layouts: Mapping[str, ModuleLayout]) -> int:
        """Stages from ``(module, stage)`` inclusive to the end of the longest path to the sink."""
        num_stages = layouts[module].pp
        if not 0 <= stage < num_stages:
            raise ValueError(f"stage {stage} is outside [0, {num_stages}) of module {module!r}")
        return (num_stages - stage) + self.downstream_depth(module, layouts)

    def total_depth(self, layouts: Mapping[str, ModuleLayout]) -> int:
        """Stages on the longest source-to-sink path, weighted by pp."""
        return max(self.remaining_depth(module, 0, layouts) for module in self.edges)

    def warmup(
        self, module: str, stage: int, layouts: Mapping[str, ModuleLayout], num_microbatches: int
    ) -> int:
        """Forwards before the first backward of a 1F1B stage.

        It is this stage's own remaining depth minus one, not the whole graph's: a shallow encoder branch
        next to a deep one would otherwise run ahead by the difference (upstream's over-warming).
        """
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be positive, got {num_microbatches}")
        return min(self.remaining_depth(module, stage, layouts) - 1, num_microbatches)


def default_topology(module_names: Collection[str]) -> Topology:
    """Every modality feeds the language model."""
    if LANGUAGE_MODULE not in module_names:
        raise ValueError(f"module names {list(module_names)} lack the language module {LANGUAGE_MODULE!r}")
    edges = {name: (LANGUAGE_MODULE,) for name in module_names if name != LANGUAGE_MODULE}
    return Topology({**edges, LANGUAGE_MODULE: ()})
