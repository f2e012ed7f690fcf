"""``RunRecord``: one run, as every layer above the core sees it.

The same names, unchanged, are a run folder's ``summary.json``, a campaign run's ``record.json``, the
columns of ``results.csv`` and the fields of a search row: nothing renames a quantity on its way up.
``from_dict`` also reads the keys that ``summary.json`` had before the record existed, so run
folders written by earlier versions still load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..utils import read_json, write_json

# summary.json keys of earlier versions -> the record's names
LEGACY_KEYS = {"adapted_layers": "selected_layers", "eval_loss_after": "eval_loss",
               "accuracy_after": "accuracy", "base_params": "parameters", "num_layers": "layers"}


@dataclass(frozen=True)
class RunRecord:
    """What one training run was, did and measured. Fields the run did not reach are None."""

    status: str
    """``completed`` or ``failed``."""
    # identity
    method: str = "aletheia"
    """``aletheia`` (probe-selected layers) or ``standard`` (every layer)."""
    seed: int | None = None
    steps: int | None = None
    """Optimizer steps the run was asked for."""
    reason: str | None = None
    """Why a failed run failed (non-finite loss at step N, out of memory, ...)."""
    run_id: str | None = None
    """The run's name inside a campaign or search (its folder under ``runs/``)."""
    model: str = "default"
    """The model as the user named it (a campaign's model key)."""
    model_id: str | None = None
    """A campaign spec's id for the model (hub id, folder, ``default``, ``random:FAMILY``)."""
    model_path: str | None = None
    """The folder the weights were loaded from."""
    family: str | None = None
    recipe: str | None = None
    """A campaign recipe or search arm; None for a plain ``aletheia train``."""
    budget: float | None = None
    """Share of layers kept by a campaign's budget sweep."""
    selector: str | None = None

    # the model and its adapter
    parameters: int | None = None
    """Parameters of the base model."""
    layers: int | None = None
    """Transformer blocks of the base model."""
    selected_layers: list[int] | None = None
    """Blocks that carry adapters (every block for standard LoRA)."""
    trainable_params: int | None = None
    ranks: dict[str, int] | None = None

    # training
    steps_done: int | None = None
    failed_step: int | None = None
    train_seconds: float | None = None
    median_step_seconds: float | None = None
    tokens_per_second: float | None = None
    final_loss: float | None = None
    loss_scale: float | None = None
    processes: int | None = None
    resumed_from_step: int | None = None
    """Set when the run continued from a checkpoint: the steps before it came from that checkpoint."""
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    padding_free: bool | None = None
    """Whether the steps ran padding-free (asked for, and exact for this model); None: older runs."""
    probe_seconds: float | None = None
    probe_reused: bool | None = None

    # evaluation
    eval_loss_before: float | None = None
    eval_loss: float | None = None
    """Held-out loss after training."""
    accuracy_before: float | None = None
    accuracy: float | None = None
    """Held-out exact-match accuracy after training (bootstrap data only)."""
    eval_examples: int | None = None
    train_examples: int | None = None
    mmlu_base: float | None = None
    mmlu_ft: float | None = None
    gsm8k_base: float | None = None
    gsm8k_ft: float | None = None
    humaneval_base: float | None = None
    humaneval_ft: float | None = None

    # where and when
    device: str | None = None
    dtype: str | None = None
    torch_threads: int | None = None
    versions: dict[str, str | None] | None = None
    git_revision: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def replace(self, **changes: Any) -> "RunRecord":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """A record from today's keys or from an older ``summary.json`` / ``record.json``."""
        d = dict(data)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                d.setdefault(new, d.pop(old))
        failure = d.pop("failure", None) or {}
        d.setdefault("reason", failure.get("reason"))
        d.setdefault("failed_step", failure.get("step"))
        d.setdefault("method", "standard" if d.get("recipe") == "standard" else "aletheia")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_record(path: str | Path) -> RunRecord | None:
    """The record in a JSON file (``summary.json``, ``record.json``), or None when there is none."""
    data = read_json(path)
    return RunRecord.from_dict(data) if isinstance(data, dict) and "status" in data else None


def write_record(path: str | Path, record: RunRecord) -> None:
    """Atomically; a non-finite number is written as null (``write_json`` lists it)."""
    write_json(path, record.to_dict())
