"""Trackers (``train.report_to``): what a run logs to TensorBoard and MLflow is read back and checked
against ``metrics.jsonl``; W&B runs offline into the run folder; a wrong or missing tracker is one line
before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from aletheia import trackers

FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


def train(model, out, report_to, capsys, method="aletheia"):
    return run_cli(["train", "--method", method, "--model", str(model), "--steps", "3", "--output", str(out),
                    "--train.report_to", report_to, *FAST], capsys)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def local_trackers(monkeypatch):
    """The offline defaults, whatever the machine running the tests has set."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_MODE",
                 "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def test_tensorboard_and_mlflow_hold_the_metrics_of_the_run(tmp_path, tiny_model_dir, capsys, local_trackers):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = train(tiny_model_dir, run, "[tensorboard,mlflow]", capsys)
    assert code == 0, err
    expected = losses(run)
    summary = json.loads((run / "summary.json").read_text())
    assert len(expected) == 3

    # TensorBoard: the event files in RUN/tensorboard (moved with the run out of .partial)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/step_seconds", "train/tokens_per_second",
            "eval/loss_before", "eval/loss", "probe/score"} <= set(scalars)
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3]
    assert [e.value for e in logged] == pytest.approx(expected, rel=1e-6)  # TensorBoard keeps float32
    assert events.Scalars("eval/loss")[-1].value == pytest.approx(summary["eval_loss"], rel=1e-6)
    assert len(events.Scalars("probe/score")) == summary["layers"]
    assert "probe/scores" in events.Tags()["histograms"]

    # MLflow: the local store RUN/mlflow.db
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("aletheia").experiment_id])
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == expected
    metrics = found.data.metrics
    assert metrics["eval/loss_before"] == pytest.approx(summary["eval_loss_before"])
    assert metrics["eval/loss"] == pytest.approx(summary["eval_loss"])
    assert {"train/lr", "train/grad_norm", "train/step_seconds", "train/tokens_per_second"} <= set(metrics)
    scores = client.get_metric_history(found.info.run_id, "probe/score")
    assert [m.step for m in sorted(scores, key=lambda m: m.step)] == list(range(summary["layers"]))
    params = found.data.params
    assert params["selected_layers"] == str(summary["selected_layers"])
    assert params["train.steps"] == "3" and params["method"] == "aletheia"


def test_wandb_offline_writes_its_run_folder(tmp_path, tiny_model_dir, capsys, local_trackers):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    code, _, err = train(tiny_model_dir, run, "[wandb]", capsys, method="standard")
    assert code == 0, err
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("*.wandb")  # the run's records, for ``wandb sync`` to upload later
    data = log.read_bytes()
    assert b"train/loss" in data and b"eval/loss" in data


def test_trackers_change_no_number(tmp_path, tiny_model_dir, capsys, local_trackers):
    """Logging reads the numbers and draws no random ones: the same losses and adapter as without."""
    names = [name for name in trackers.TRACKERS if trackers.installed(name)]
    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    assert train(tiny_model_dir, plain, "[]", capsys)[0] == 0
    assert train(tiny_model_dir, tracked, f"[{','.join(names)}]", capsys)[0] == 0
    assert losses(tracked) == losses(plain)
    adapter = "adapter_model.safetensors"
    assert (tracked / adapter).read_bytes() == (plain / adapter).read_bytes()


def test_tensorboard_true_is_report_to_tensorboard():
    from aletheia.config import TrainConfig

    assert TrainConfig(tensorboard=True).tracker_names() == ["tensorboard"]
    assert TrainConfig(tensorboard=True, report_to=["mlflow", "tensorboard"]).tracker_names() == [
        "mlflow", "tensorboard"]


def test_an_unknown_tracker_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import aletheia.recipe

    monkeypatch.setattr(aletheia.recipe, "load_model_and_tokenizer", _never)
    code, _, err = train(tmp_path / "no-model", tmp_path / "run", "[tensorboard,comet]", capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "'comet'" in lines[0], err
    assert all(name in lines[0] for name in trackers.TRACKERS)


def test_a_tracker_not_installed_is_one_line_naming_the_package(tmp_path, capsys, monkeypatch):
    import aletheia.recipe

    monkeypatch.setattr(aletheia.recipe, "load_model_and_tokenizer", _never)
    monkeypatch.setattr(trackers, "installed", lambda name: name != "mlflow")
    code, _, err = train(tmp_path / "no-model", tmp_path / "run", "[tensorboard,mlflow]", capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install mlflow-skinny sqlalchemy alembic" in lines[0], err


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded before the tracker check")
