"""Topology validation, orders, depths and warmups."""

from __future__ import annotations

import pytest

from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import Topology, default_topology


def test_default_topology_feeds_every_modality_into_language() -> None:
    topology = default_topology(["images", "audio", "language"])
    assert topology.edges == {"images": ("language",), "audio": ("language",), "language": ()}
    assert topology.sources_of("language") == ("images", "audio")
    assert topology.sources_of("images") == ()
    assert topology.sinks == ("language",)
    assert topology.topological_order() == ("images", "audio", "language")


def test_topological_order_puts_every_module_after_its_sources() -> None:
    topology = Topology({"language": [], "proj": ["language"], "images": ["proj"], "audio": ["language"]})
    order = topology.topological_order()
    assert sorted(order) == sorted(topology.modules)
    for module in order:
        for successor in topology.successors(module):
            assert order.index(module) < order.index(successor)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ({"images": ["vision"], "language": []}, r"topology edge images -> \['vision'\] names unknown modules"),
        ({"images": ["language", "language"], "language": []}, "lists a successor of 'images' twice"),
        ({"a": ["b"], "b": ["a", "language"], "language": []}, "topology has a cycle: a -> b -> a"),
        ({"images": ["images"], "language": []}, "topology has a cycle: images -> images"),
        (
            {"a": ["language"], "language": ["b"], "b": ["c"], "c": ["language"]},
            "topology has a cycle: language -> b -> c -> language",
        ),
        ({"images": ["text"], "text": []}, r"topology must contain 'language', got modules \['images', 'text'\]"),
        ({"images": [], "language": []}, r"exactly one sink, 'language'; got sinks \['images', 'language'\]"),
        ({"language": ["images"], "images": []}, r"got sinks \['images'\]"),
    ],
)
def test_invalid_topologies_are_named(edges: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Topology(edges)


def test_require_modules_names_unknown_and_missing() -> None:
    topology = default_topology(["images", "language"])
    topology.require_modules(["language", "images"])
    with pytest.raises(ValueError, match=r"extra in the topology \['images'\], missing from the topology \['audio'\]"):
        topology.require_modules(["audio", "language"])
    with pytest.raises(ValueError, match="lack the language module"):
        default_topology(["images"])


def _longest_path_depth(topology: Topology, layouts: dict[str, L], module: str, stage: int) -> int:
    """Independent check: enumerate every path from ``module`` to the sink and take the heaviest."""
    paths = [[module]]
    complete = []
    while paths:
        path = paths.pop()
        successors = topology.edges[path[-1]]
        if not successors:
            complete.append(path)
        paths += [[*path, successor] for successor in successors]
    return max(layouts[module].pp - stage + sum(layouts[m].pp for m in path[1:]) for path in complete)


DAG_LAYOUTS = {"images": L(pp=2), "audio": L(rank_offset=2), "language": L(pp=3, rank_offset=3)}
DEEP_EDGES = {"images": ["proj"], "proj": ["language"], "audio": ["language"], "language": []}
DEEP_LAYOUTS = {"images": L(pp=2), "proj": L(pp=2), "audio": L(), "language": L(pp=3)}


@pytest.mark.parametrize(
    ("topology", "layouts"),
    [(default_topology(list(DAG_LAYOUTS)), DAG_LAYOUTS), (Topology(DEEP_EDGES), DEEP_LAYOUTS)],
)
def test_remaining_and_total_depth_match_path_enumeration(topology: Topology, layouts: dict[str, L]) -> None:
    for module, layout in layouts.items():
        for stage in range(layout.pp):
            expected = _longest_path_depth(topology, layouts, module, stage)
            assert topology.remaining_depth(module, stage, layouts) == expected
    assert topology.total_depth(layouts) == max(
        _longest_path_depth(topology, layouts, module, 0) for module in layouts
    )


def test_warmup_follows_own_branch_depth_not_the_deepest_branch() -> None:
    topology = default_topology(list(DAG_LAYOUTS))
    # images stage 0: 2 + 3 stages remain; audio: 1 + 3 (upstream would warm audio like images' stage 0).
    assert topology.warmup("images", 0, DAG_LAYOUTS, num_microbatches=8) == 4
    assert topology.warmup("images", 1, DAG_LAYOUTS, num_microbatches=8) == 3
    assert topology.warmup("audio", 0, DAG_LAYOUTS, num_microbatches=8) == 3
    assert [topology.warmup("language", s, DAG_LAYOUTS, num_microbatches=8) for s in range(3)] == [2, 1, 0]
    assert topology.warmup("images", 0, DAG_LAYOUTS, num_microbatches=2) == 2


def test_depth_and_warmup_errors() -> None:
    topology = default_topology(list(DAG_LAYOUTS))
    with pytest.raises(ValueError, match=r"stage 2 is outside \[0, 2\) of module 'images'"):
        topology.remaining_depth("images", 2, DAG_LAYOUTS)
    with pytest.raises(ValueError, match="num_microbatches must be positive, got 0"):
        topology.warmup("audio", 0, DAG_LAYOUTS, num_microbatches=0)
    with pytest.raises(ValueError, match="unknown module 'video'"):
        topology.sources_of("video")
