"""Epochs or steps, and the learning-rate schedule after the warmup."""

from __future__ import annotations

import json
import math

import pytest
from conftest import CharTokenizer, alpaca_records, run_cli, save_tiny_model, tiny_llama

from aletheia import TrainConfig, train_lora
from aletheia.architectures import get_architecture
from aletheia.config import RunConfig
from aletheia.data import batches_per_epoch, tokenize_examples
from aletheia.errors import ConfigError
from aletheia.examples import load_examples
from aletheia.lora import apply_lora, standard_lora_config

FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


def test_epochs_become_optimizer_steps():
    cfg = TrainConfig(epochs=2, batch_size=4, grad_accum=2)
    assert batches_per_epoch(45, 4) == 11 and batches_per_epoch(3, 4) == 1  # whole batches, as drawn
    assert cfg.steps_for(11) == 11 and cfg.replace(epochs=0.5).steps_for(11) == 3
    assert TrainConfig(steps=7).steps_for(11) == 7
    with pytest.raises(ConfigError, match="epochs=0.0 must be a positive number"):
        RunConfig(train=TrainConfig(epochs=0)).validate()
    with pytest.raises(ConfigError, match="scheduler='step' is unknown; use one of cosine, linear, constant"):
        RunConfig(train=TrainConfig(scheduler="step")).validate()


def _lrs(scheduler: str, tmp_path) -> list[float]:
    model = tiny_llama(num_layers=2)
    model = apply_lora(model, standard_lora_config(get_architecture(model), 2))
    items = tokenize_examples(CharTokenizer(), load_examples(None, 20), 64)
    cfg = TrainConfig(steps=6, warmup_steps=2, lr=1e-3, batch_size=2, grad_accum=1, scheduler=scheduler)
    path = tmp_path / f"{scheduler}.jsonl"
    train_lora(model, items, cfg, seed=0, pad_id=2, metrics_path=path, progress=False)
    return [json.loads(line)["lr"] for line in path.read_text().splitlines()]


def test_each_scheduler_follows_its_curve_after_the_warmup(tmp_path):
    warm = [5e-4, 1e-3]  # after steps 1 and 2 of 2 warm-up steps
    after = [(s - 2) / 4 for s in range(3, 7)]  # progress through the decay after steps 3..6
    expected = {
        "constant": warm + [1e-3] * 4,
        "linear": warm + [1e-3 * (1 - p) for p in after],
        "cosine": warm + [1e-3 * 0.5 * (1 + math.cos(math.pi * p)) for p in after],
    }
    for name, curve in expected.items():
        assert _lrs(name, tmp_path) == pytest.approx(curve, abs=1e-12), name


def test_train_and_compare_resolve_epochs_to_the_same_steps(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    data = tmp_path / "train.json"
    data.write_text(json.dumps(alpaca_records(24)))  # 22 train, 2 held out; 11 batches of 2 per epoch
    common = ["--model", str(model), "--data", str(data), "--train.epochs", "1", "--train.grad_accum", "2", *FAST]
    code, _, err = run_cli(["train", "--method", "standard", "-o", str(tmp_path / "run"), *common], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["steps"], summary["steps_done"]) == (6, 6)  # ceil(11 / 2)
    assert "train.epochs 1: 22 training examples, 11 batches of 2 per epoch, grad_accum 2 -> 6" in err
    assert RunConfig.from_yaml(tmp_path / "run" / "config.yaml").train.epochs == 1  # as given

    code, out, err = run_cli(["compare", "-o", str(tmp_path / "cmp"), *common], capsys)
    assert code == 0, err
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["steps"] == 6
    assert comparison["standard"]["steps_done"] == comparison["aletheia"]["steps_done"] == 6
    assert "both methods trained 6 optimizer steps" in out
    assert "6 steps each" in (tmp_path / "cmp" / "comparison.md").read_text()
