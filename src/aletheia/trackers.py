"""Experiment trackers (``train.report_to``): TensorBoard, MLflow and W&B through accelerate's trackers.

Offline by default, and inside the run folder, so a tracker's files move with the run when its staging
folder is committed: TensorBoard events in ``RUN/tensorboard``; MLflow in a local SQLite store
``RUN/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` names another (MLflow 3 refuses plain ``file:``
stores); W&B in ``RUN/wandb`` in offline mode unless ``WANDB_MODE`` is set or the user is logged in
(``WANDB_API_KEY`` or a ``wandb login`` netrc entry); ``wandb sync RUN/wandb/offline-run-*`` uploads
an offline run later.

What each gets: per step ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/step_seconds``,
``train/tokens_per_second``; at the end ``eval/loss_before`` and ``eval/loss``; the probe's per-layer
scores (``probe/score`` with the layer as its step, plus a histogram in TensorBoard and a table in
W&B); the resolved config and the selected layers as hyperparameters.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
from pathlib import Path
from typing import Self

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny sqlalchemy alembic", "wandb": "wandb"}
"""The trackers ``train.report_to`` knows, each with what ``pip install`` needs for it (MLflow's local
SQLite store needs sqlalchemy and alembic, which mlflow-skinny leaves out)."""
_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"),
            "wandb": ("wandb",)}


def installed(name: str) -> bool:
    """Whether the tracker's packages can be imported (checked before any model loads)."""
    return all(importlib.util.find_spec(module) is not None for module in _MODULES[name])


class Trackers:
    """The run's trackers as one: ``log(values, step)`` sends to each; none at all logs nothing."""

    def __init__(self, trackers: list | None = None):
        self.trackers = trackers or []

    def log(self, values: dict, step: int | None = None) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        for t in self.trackers:
            t.log(values, step=step)

    def log_hparams(self, values: dict) -> None:
        """Hyperparameters: plain scalars; lists and None as their text (what TensorBoard accepts)."""
        flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in _flatten(values).items()}
        for t in self.trackers:
            t.store_init_configuration(flat)

    def log_probe_scores(self, scores: list[float], selected: list[int]) -> None:
        """One score per layer: a series over layers where the tracker has steps, else a table."""
        for t in self.trackers:
            if t.name == "wandb":
                import wandb

                rows = [[i, float(s), i in selected] for i, s in enumerate(scores)]
                t.run.log({"probe/scores": wandb.Table(columns=["layer", "score", "selected"], data=rows)})
                continue
            for layer, score in enumerate(scores):
                t.log({"probe/score": float(score)}, step=layer)
            if t.name == "tensorboard":
                import torch

                t.writer.add_histogram("probe/scores", torch.tensor(scores, dtype=torch.float64))

    def close(self) -> None:
        """Finish every tracker (flush and close its files) before the run folder is committed."""
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trackers(names: list[str], out: Path, run_name: str) -> Trackers:
    """Start the named trackers writing below the run folder ``out``."""
    if not names:
        return Trackers()
    from accelerate.state import PartialState

    PartialState()  # accelerate's trackers log through its logger, which needs the state
    started = []
    try:
        for name in names:
            tracker = _make(name, Path(out), run_name)
            tracker.main_process_only = False  # only the main process opens trackers (recipe.py)
            tracker.start()
            started.append(tracker)
    except BaseException:
        Trackers(started).close()
        raise
    return Trackers(started)


def _make(name: str, out: Path, run_name: str):
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker("tensorboard", out)  # RUN/tensorboard
    if name == "mlflow":
        import mlflow

        for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(chatty).setLevel(logging.WARNING)
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        if local:
            mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
        return tracking.MLflowTracker(experiment_name="aletheia", run_name=run_name,
                                      logging_dir=str(out / "mlartifacts") if local else None)
    if name == "wandb":
        kwargs = {"name": run_name, "dir": str(out)}
        if not os.environ.get("WANDB_MODE") and not _wandb_logged_in():
            kwargs["mode"] = "offline"
        return tracking.WandBTracker(os.environ.get("WANDB_PROJECT", "aletheia"), **kwargs)
    raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
