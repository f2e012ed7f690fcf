"""The before/after evaluation is sized to the run: a 3-step smoke run does not evaluate 64 examples
twice, and runs long enough to have trained on the whole held-out split evaluate all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import alpaca_records, run_cli

from aletheia.config import RunConfig
from aletheia.recipe import eval_size, prepare

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@pytest.mark.parametrize("steps, batch, accum, expected", [
    (3, 4, 2, 24),    # a smoke run: as many as its 3 steps train on
    (1, 1, 1, 8),     # never fewer than one eval batch
    (8, 4, 2, 64),    # from 8 default steps on, the whole split
    (200, 4, 2, 64),  # the default run
])
def test_eval_size_follows_the_examples_a_run_trains_on(steps, batch, accum, expected):
    cfg = RunConfig()
    cfg.train.steps, cfg.train.batch_size, cfg.train.grad_accum = steps, batch, accum
    assert eval_size(cfg, 64, 500) == expected


def test_the_quickstart_config_still_evaluates_its_whole_split():
    """The README's main job keeps every number: 60 steps x 4 x 2 is far above its 64 held-out examples."""
    cfg = RunConfig.from_yaml(QUICKSTART)
    assert cfg.data.max_eval_examples == 64 and cfg.eval_accuracy_examples == 32
    assert eval_size(cfg, 60, 540) == 60  # the 600-example bootstrap set holds out 60


def test_a_short_run_evaluates_a_prefix_of_the_same_split_and_trains_on_the_same_data(tiny_model_dir,
                                                                                      tmp_path):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(alpaca_records(400)))  # 40 held out

    def workspace(steps):
        cfg = RunConfig(model=str(tiny_model_dir))
        cfg.data.path, cfg.data.max_length, cfg.train.steps = str(data), 48, steps
        return prepare(cfg, "cpu")

    short, full = workspace(2), workspace(200)
    assert len(full.eval_examples) == 40 and len(short.eval_examples) == 16  # 2 steps x 4 x 2
    assert short.eval_examples == full.eval_examples[:16]
    assert len(short.train_items) == len(full.train_items) == 360
    assert short.train_items == full.train_items  # the same tokens: only evaluation shrinks


def test_a_smoke_run_records_how_many_examples_it_evaluated(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(alpaca_records(400)))
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--model", str(tiny_model_dir), "--data", str(data), "--steps", "1",
                            "--batch-size", "2", "--max-length", "48", "--batches", "1", "--quiet",
                            "-o", str(run)], capsys)
    assert code == 0, err
    assert "evaluating the base model on 8 held-out examples" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_examples"] == 8 and summary["train_examples"] == 360
