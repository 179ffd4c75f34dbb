"""The run plan: layout validation from the config (before any process group), backward modules, recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mimo.config import config_from_dict, load_config
from mimo.parallel.layout import Placement
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.simulate import simulate
from mimo.training.run_plan import plan_run
from tests.hf_fixtures import shipped_recipe, tiny_hf_models  # noqa: F401

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

IMAGES = {"images": {"placeholder_id": 1, "encoders": {"vit": {"kind": "vision", "num_layers": 2}}}}
AUDIO = {"audio": {"placeholder_id": 2, "encoders": {"mel": {"kind": "audio"}}}}


def _raw(layout: dict | None = None, *, modalities: dict | None = None, **sections: dict) -> dict:
    raw = {"model": {"modalities": modalities or IMAGES}, "train": {"global_batch_size": 8, "num_microbatches": 2}}
    raw.update(sections)
    if layout is not None:
        raw["layout"] = layout
    return raw


def test_no_layout_means_colocated_data_parallel_over_the_world():
    plan = plan_run(config_from_dict(_raw()), world_size=2)
    assert plan.is_fused and plan.placement is Placement.COLOCATED
    assert {name: (layout.dp, layout.pp) for name, layout in plan.layouts.items()} == {
        "images": (2, 1), "language": (2, 1)}
    assert plan.loss_rank == 0


def test_non_colocated_plan_logs_on_the_last_language_stage():
    layout = {"images": {"dp": 1}, "language": {"pp": 2, "rank_offset": 1}}
    plan = plan_run(config_from_dict(_raw(layout)), world_size=3)
    assert not plan.is_fused and plan.placement is Placement.NON_COLOCATED
    assert plan.loss_rank == 2


@pytest.mark.parametrize(
    ("freeze", "backward"),
    [
        ([], {"images", "language"}),
        (["images"], {"language"}),
        (["images.encoders"], {"images", "language"}),
        (["images.encoders", "images.projection"], {"language"}),
        (["language"], {"images", "language"}),
        (["images", "language"], set()),
    ],
)
def test_backward_runs_where_something_trains_and_downstream_of_it(freeze, backward):
    plan = plan_run(config_from_dict(_raw(optim={"freeze": freeze})), world_size=1)
    assert plan.backward_modules == backward


@pytest.mark.parametrize(
    ("layout", "world_size", "message"),
    [
        ({"images": {"dp": 2}, "language": {"rank_offset": 1}}, 3, "modules 'images' (ranks [0, 1]) and 'language'"),
        ({"images": {}, "language": {"dp": 2, "rank_offset": 2}}, 3, "leave ranks [1] without a module"),
        ({"images": {}, "language": {"pp": 2, "rank_offset": 1}}, 4, "cover 3 ranks"),
        ({"images": {"dp": 2}, "language": {"dp": 3, "rank_offset": 2}}, 5, "dp sizes must divide one another"),
        ({"images": {"dp": 8}, "language": {"rank_offset": 8}}, 9, "micro_batch_size 4 is not divisible by dp 8"),
        ({"images": {}, "language": {"pp": 4, "rank_offset": 1}}, 5, "layout.language: cannot spread 2 layers"),
        ({"images": {"pp": 3}, "language": {"rank_offset": 3}}, 4, "layout.images"),
    ],
)
def test_layout_mistakes_are_value_errors_naming_the_values(layout, world_size, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_run(config_from_dict(_raw(layout)), world_size=world_size)


def test_layout_must_name_every_module_and_only_known_ones():
    with pytest.raises(ValueError, match=r"unknown: \['vision'\], missing: \['images'\]"):
        config_from_dict(_raw({"vision": {}, "language": {}}))


def test_a_cycle_in_the_topology_is_named():
    raw = _raw(modalities={**IMAGES, **AUDIO}, topology={"images": ["audio"], "audio": ["images"], "language": []})
    with pytest.raises(ValueError, match="cycle: images -> audio -> images"):
        plan_run(config_from_dict(raw), world_size=1)


def test_a_modality_must_feed_the_language_model_directly():
    raw = _raw(modalities={**IMAGES, **AUDIO}, topology={"images": ["audio"], "audio": ["language"], "language": []})
    with pytest.raises(ValueError, match="modality 'images' feeds \\['audio'\\]"):
        plan_run(config_from_dict(raw), world_size=1)


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_plans_and_its_schedule_runs_without_deadlock(recipe, tiny_hf_models, tmp_path):
    cfg = load_config(shipped_recipe(CONFIGS / recipe, tiny_hf_models, tmp_path))
    world_size = sum(entry.dp * entry.pp for entry in cfg.layout.values()) or 1
    plan = plan_run(cfg, world_size)
    schedule = build_train_schedule(plan.layouts, plan.topology, cfg.train.num_microbatches,
                                    backward_modules=plan.backward_modules)
    result = simulate(schedule, plan.layouts, plan.topology, cfg.train.micro_batch_size)
    assert result.num_steps >= 2 * cfg.train.num_microbatches
