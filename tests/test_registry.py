"""The one registry helper: both ways to register, and a failed lookup that lists what exists."""

import re

import pytest

from aletheia.architectures import ARCHITECTURES
from aletheia.campaign.executors import EXECUTORS, LocalExecutor, get_executor
from aletheia.campaign.spec import ExecutorConfig
from aletheia.config import ProbeConfig
from aletheia.errors import AletheiaError
from aletheia.evaluation.suite import BENCHMARKS, TASKS
from aletheia.registry import Registry
from aletheia.selection import SELECTORS, SelectionContext, select_layers


def test_decorator_and_call_register_the_same_way():
    shapes = Registry("shape")

    @shapes.register("square")
    def square(side):
        return side * side

    circle = shapes.register("circle", lambda r: 3.14 * r * r)
    assert square(3) == 9  # the decorator hands the function back unchanged
    assert shapes.get("square") is square and shapes.get("circle") is circle
    assert list(shapes) == ["square", "circle"]  # registration order
    assert shapes.names() == ["circle", "square"]  # sorted, for messages
    assert "square" in shapes and len(shapes) == 2


def test_a_failed_lookup_lists_the_registered_names():
    shapes = Registry("shape")
    shapes.register("square", 4)
    shapes.register("circle", 0)
    expected = "unknown shape 'hexagon'; available: circle, square"
    with pytest.raises(AletheiaError, match=f"^{re.escape(expected)}$"):
        shapes.get("hexagon")
    assert shapes.get("hexagon", None) is None  # with a default it answers as dict.get does
    with pytest.raises(KeyError):
        shapes["hexagon"]


def test_registering_a_name_again_replaces_its_entry():
    shapes = Registry("shape")
    shapes.register("square", 1)
    shapes.register("square", 2)
    assert shapes.get("square") == 2 and len(shapes) == 1


def test_monkeypatch_can_add_an_entry_for_one_test_and_it_is_removed_after(monkeypatch):
    shapes = Registry("shape")
    shapes.register("square", 4)
    with monkeypatch.context() as m:
        m.setitem(shapes, "triangle", 3)
        assert shapes.get("triangle") == 3
    assert list(shapes) == ["square"]


@pytest.mark.parametrize("registry, kind, some", [
    (ARCHITECTURES, "architecture family", ["llama", "gpt2", "mixtral"]),
    (SELECTORS, "selector", ["gradient-norm", "cost-aware", "spectrum"]),
    (EXECUTORS, "executor", ["local", "ray", "slurm"]),
    (BENCHMARKS, "benchmark", list(TASKS)),
])
def test_every_pluggable_part_is_a_registry_whose_errors_list_its_entries(registry, kind, some):
    assert isinstance(registry, Registry) and set(some) <= set(registry)
    with pytest.raises(AletheiaError) as err:
        registry.get("no-such-thing")
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'no-such-thing'; available: ")
    assert all(name in message for name in registry)


def test_unknown_selector_and_executor_name_the_alternatives():
    ctx = SelectionContext(None, [], ProbeConfig(selector="gradient-nrom"), progress=False)
    with pytest.raises(AletheiaError, match="unknown selector 'gradient-nrom'; available: ") as err:
        select_layers(ctx)
    assert all(name in str(err.value) for name in SELECTORS)
    expected = "unknown executor 'cloud'; available: local, ray, slurm"
    with pytest.raises(AletheiaError, match=expected):
        get_executor(ExecutorConfig(name="cloud"), "unused")
    assert isinstance(get_executor(ExecutorConfig(), "unused"), LocalExecutor)


def test_benchmark_tasks_are_the_registry_keys_in_order():
    assert TASKS == ("mmlu", "gsm8k", "humaneval", "heldout")
    assert BENCHMARKS.get("humaneval").lm_eval is None  # code always runs in our sandbox
    assert BENCHMARKS.get("mmlu").lm_eval is not None


def test_a_recipe_kind_is_a_registry_entry_and_a_new_one_plans_runs(tmp_path, monkeypatch):
    from aletheia.campaign import CampaignSpec, plan_jobs
    from aletheia.campaign.spec import RECIPE_KINDS, RecipeKind

    def quarter(recipe, cfg, steps):  # a custom kind: Aletheia at a quarter of the steps
        cfg.train.steps = max(1, steps // 4)

    monkeypatch.setitem(RECIPE_KINDS, "quick_aletheia", RecipeKind("aletheia", lambda r: [0.5], plan=quarter))
    spec = CampaignSpec.from_dict({"name": "k", "models": ["random:llama:4"], "seeds": [1],
                                   "recipes": ["standard", "quick_aletheia"], "train": {"steps": 8}}).validate()
    jobs = {j.recipe: j for j in plan_jobs(spec, tmp_path)}
    assert jobs["quick_aletheia"].config["method"] == "aletheia"
    assert jobs["quick_aletheia"].config["train"]["steps"] == 2 and jobs["standard"].config["train"]["steps"] == 8
    with pytest.raises(AletheiaError, match="is not a recipe; use one of standard, aletheia"):
        CampaignSpec.from_dict({"name": "k", "models": ["random:llama:4"], "recipes": ["standard", "nope"]}
                               ).validate()
