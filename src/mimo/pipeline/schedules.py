"""Pure schedule builders: per-rank action lists for training (1F1B) and evaluation (forward only).

Non-colocated layouts: each rank runs 1F1B for the one stage it holds, with a warmup equal to that stage's
remaining depth to the sink minus one (``Topology.warmup``), and communication actions around every
compute action. Colocated layouts: each rank holds every module at stage 0 and runs, per microbatch, the
forwards in topological order then the backwards in reverse, with no communication actions (the hand-offs
between modules stay on the rank). A language model pipelined over the ranks of its colocated encoders: each
rank runs its encoders' forwards for every microbatch first (their rows go out before any language stage needs
them), then its language stage's 1F1B, then its encoders' backwards (their gradients have all arrived by then).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from mimo.model.configs import LANGUAGE_MODULE
from mimo.parallel.layout import ModuleLayout, Placement, placement_of
from mimo.parallel.topology import Topology
from mimo.pipeline.actions import Action, ActionKind, Schedule

__all__ = [
    "build_eval_schedule",
    "build_train_schedule",
    "forward_only",
    "modules_needing_backward",
    "one_f_one_b",
]


def one_f_one_b(module: str, stage: int, num_warmup: int, num_microbatches: int) -> list[Action]:
    """Compute-only 1F1B order of one stage: warmup forwards, steady one-forward-one-backward, cooldown.

    For ``num_warmup=1, num_microbatches=4``: ``F0 F1 B0 F2 B1 F3 B2 B3``.
    """
    if num_microbatches < 1 or not 0 <= num_warmup <= num_microbatches:
        raise ValueError(
            f"need num_microbatches >= 1 and 0 <= num_warmup <= num_microbatches, "
            f"got num_warmup={num_warmup}, num_microbatches={num_microbatches}"
        )
    forwards = [Action(module, stage, ActionKind.F, mb) for mb in range(num_microbatches)]
    backwards = [Action(module, stage, ActionKind.B, mb) for mb in range(num_microbatches)]
    steady = [action for pair in zip(forwards[num_warmup:], backwards) for action in pair]
    return forwards[:num_warmup] + steady + backwards[num_microbatches - num_warmup :]


def forward_only(module: str, stage: int, num_microbatches: int) -> list[Action]:
    """Compute-only order of a stage that runs no backward."""
    return [Action(module, stage, ActionKind.F, mb) for mb in range(num_microbatches)]


def modules_needing_backward(topology: Topology, trainable_modules: Collection[str]) -> frozenset[str]:
    """Trainable modules plus everything downstream of them, through which their gradients flow."""
    needed: set[str] = set()
    pending = list(trainable_modules)
    while pending:
        module = pending.pop()
        if module not in needed:
            needed.add(module)
            pending.extend(topology.successors(module))
    return frozenset(needed)


def build_train_schedule(
    layouts: Mapping[str, ModuleLayout],
    topology: Topology,
    num_microbatches: int,
    *,
    backward_modules: Collection[str] | None = None,
) -> Schedule:
    """Per-rank action lists, communication included, for one training step.

    Args:
        layouts: validated layouts (see ``validate_layouts``), one per topology module.
        backward_modules: modules that run a backward; None means all. A module without one (frozen,
            with nothing trainable upstream) gets no B, and no gradient crosses its outgoing bridges.
            Must be closed downstream: see ``modules_needing_backward``.
    """
    topology.require_modules(layouts)
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be positive, got {num_microbatches}")
    backward = _resolve_backward(topology, backward_modules)
    if placement_of(layouts) is Placement.COLOCATED:
        pipelined = {name: layout.pp for name, layout in layouts.items() if layout.pp != 1}
        if pipelined.keys() == {LANGUAGE_MODULE}:
            return _colocated_pipeline(layouts, topology, num_microbatches, backward)
        if pipelined:
            encoders = {name: pp for name, pp in pipelined.items() if name != LANGUAGE_MODULE}
            raise ValueError(f"colocated encoders must have pp == 1, got pp {encoders}")
        ranks = next(iter(layouts.values())).ranks
        order = _colocated_order(topology, num_microbatches, backward)
        return {rank: list(order) for rank in ranks}
    schedule: Schedule = {}
    for module, layout in layouts.items():
        for rank in layout.ranks:
            schedule[rank] = _stage_order(module, layout.stage_of(rank), layouts, topology, num_microbatches, backward)
    return dict(sorted(schedule.items()))


def build_eval_schedule(
    layouts: Mapping[str, ModuleLayout], topology: Topology, num_microbatches: int
) -> Schedule:
    """Forward-only per-rank action lists: F with RECV_F / SEND_F."""
    return build_train_schedule(layouts, topology, num_microbatches, backward_modules=())


def _resolve_backward(topology: Topology, backward_modules: Collection[str] | None) -> frozenset[str]:
    if backward_modules is None:
        return frozenset(topology.modules)
    backward = frozenset(backward_modules)
    unknown = sorted(backward - set(topology.modules))
    if unknown:
        raise ValueError(f"backward_modules name unknown modules {unknown}; modules are {list(topology.modules)}")
    for module in sorted(backward):
        skipped = [name for name in topology.successors(module) if name not in backward]
        if skipped:
            raise ValueError(
                f"module {module!r} runs a backward, so its successors {skipped} must too (its gradient flows "
                f"through them); got backward_modules {sorted(backward)}"
            )
    return backward


def _colocated_order(topology: Topology, num_microbatches: int, backward: frozenset[str]) -> list[Action]:
    order = topology.topological_order()
    actions = []
    for mb in range(num_microbatches):
        actions += [Action(module, 0, ActionKind.F, mb) for module in order]
        actions += [Action(module, 0, ActionKind.B, mb) for module in reversed(order) if module in backward]
    return actions


def _colocated_pipeline(
    layouts: Mapping[str, ModuleLayout], topology: Topology, num_microbatches: int, backward: frozenset[str]
) -> Schedule:
    """Every rank: its encoders' forwards (each sent at once), its language stage's 1F1B, its encoders' backwards.

    Encoders have no sources, so the first part never waits; the language stages run the pipeline of a
    non-colocated layout, fed by rows already sent; the last part receives gradients sent during it.
    """
    language = layouts[LANGUAGE_MODULE]
    encoders = [module for module in topology.topological_order() if module != LANGUAGE_MODULE]
    schedule: Schedule = {}
    for rank in language.ranks:
        stage = language.stage_of(rank)
        forwards = [
            Action(module, 0, kind, mb)
            for mb in range(num_microbatches) for module in encoders for kind in (ActionKind.F, ActionKind.SEND_F)
        ]
        backwards = [
            Action(module, 0, kind, mb)
            for mb in range(num_microbatches) for module in reversed(encoders) if module in backward
            for kind in (ActionKind.RECV_B, ActionKind.B)
        ]
        middle = _stage_order(LANGUAGE_MODULE, stage, layouts, topology, num_microbatches, backward)
        schedule[rank] = forwards + middle + backwards
    return schedule


def _stage_order(
    module: str,
    stage: int,
    layouts: Mapping[str, ModuleLayout],
    topology: Topology,
    num_microbatches: int,
    backward: frozenset[str],
) -> list[Action]:
    """One non-colocated stage: its compute order with a receive before and a send after each compute."""
    if module in backward:
        num_warmup = topology.warmup(module, stage, layouts, num_microbatches)
        compute = one_f_one_b(module, stage, num_warmup, num_microbatches)
    else:
        compute = forward_only(module, stage, num_microbatches)
    sources = topology.sources_of(module)
    is_loss_stage = module == LANGUAGE_MODULE and stage == layouts[module].pp - 1
    receives = {ActionKind.F: stage > 0 or bool(sources), ActionKind.B: not is_loss_stage}
    sends = {
        ActionKind.F: not is_loss_stage,
        ActionKind.B: stage > 0 or any(source in backward for source in sources),
    }
    recv_kind = {ActionKind.F: ActionKind.RECV_F, ActionKind.B: ActionKind.RECV_B}
    send_kind = {ActionKind.F: ActionKind.SEND_F, ActionKind.B: ActionKind.SEND_B}
    actions = []
    for action in compute:
        if receives[action.kind]:
            actions.append(action._replace(kind=recv_kind[action.kind]))
        actions.append(action)
        if sends[action.kind]:
            actions.append(action._replace(kind=send_kind[action.kind]))
    return actions
