"""Configs: a lossless YAML round trip, every problem reported at once, unknown keys refused."""

from pathlib import Path

import pytest

from aletheia.config import RunConfig, TrainConfig
from aletheia.errors import ConfigError


def test_yaml_round_trip_is_lossless(tmp_path):
    cfg = RunConfig(model="Qwen/Qwen2.5-0.5B", seed=7)
    cfg.probe.layers = [1, 3]
    cfg.train.betas = [0.9, 0.95]
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(path) == cfg


@pytest.mark.parametrize("name", ["quickstart.yaml", "cost-aware-bf16.yaml"])
def test_shipped_run_configs_load_validate_and_round_trip(name, tmp_path):
    cfg = RunConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / name).validate()
    (tmp_path / name).write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(tmp_path / name) == cfg
    if name.startswith("cost-aware"):  # the benchmark's setting, as its comment says
        assert (cfg.probe.selector, cfg.probe.time_budget, cfg.adapter.match_parameters, cfg.train.dtype) == \
            ("cost-aware", 0.6, True, "bfloat16")


def test_all_problems_are_reported_together():
    cfg = RunConfig(method="magic")
    cfg.train.steps = -1
    cfg.probe.fraction = 1.5
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    message = str(err.value)
    assert "method='magic'" in message and "train.steps=-1" in message and "probe.fraction=1.5" in message


def test_unknown_keys_and_wrong_types_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="'lr' must be a number"):
        TrainConfig.from_dict({"lr": "fast"})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(bad)


def test_declared_limits_word_every_breach_the_same_way():
    from aletheia.typed_config import at_least, one_of, positive, within

    assert at_least(1).problem("grad_accum", 0) == "grad_accum=0 must be at least 1"
    assert at_least(0, " (0 means all)").problem("mmlu_n", -1) == "mmlu_n=-1 must be >= 0 (0 means all)"
    assert positive().problem("lr", 0.0) == "lr=0.0 must be positive"
    assert within(0, 1, "low").problem("fraction", 0) == "fraction=0 must be in (0, 1]"
    assert one_of(("cosine", "linear")).problem("scheduler", "step") == \
        "scheduler='step' is unknown; use one of cosine, linear"
    assert at_least(1).problem("save_every", None) is None and within(0, 1, "low").problem("fraction", 1.0) is None
    with pytest.raises(ConfigError, match="train.grad_accum=0 must be at least 1; train.lr=-1.0 must be positive"):
        RunConfig.from_dict({"train": {"grad_accum": 0, "lr": -1.0}}).validate()
