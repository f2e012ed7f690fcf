"""``RunStore``: the folder of runs a campaign or a search keeps, and the rules both follow.

Layout under the store's root::

    SPEC.yaml                        the spec the runs were planned from (checked on resume)
    runs/RUN_ID/record.json          a finished run: written atomically, as the run's last step
    shared/MODEL/seed-SEED/          what runs of one model and seed share (probe, base metrics)

A run is finished exactly when its record exists; everything else is derived from the records, so a
store killed at any moment loses nothing and duplicates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import AletheiaError
from ..utils import atomic_write_text
from ..yaml_io import load_yaml_file
from .record import RunRecord, read_record, write_record

RECORD_FILE = "record.json"


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- the spec ---------------------------------------------------------------------------------
    def open(self, spec: Any, file_name: str, comparable: Callable[[Any], dict], kind: str = "campaign",
             noun: str = "spec") -> None:
        """Save ``spec`` in the folder, or check that a resumed folder was planned from the same one.

        ``comparable(spec)`` is what must not change between runs (where they execute may)."""
        saved = self.root / file_name
        if saved.is_file():
            old = type(spec).from_dict(load_yaml_file(saved, f"{kind} {noun}"))
            if comparable(old) != comparable(spec):
                raise AletheiaError(f"{self.root} holds a {kind} with a different {noun} ({saved}); resume it "
                                    f"with the same {noun}, or pass --output with a new folder")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, spec.to_yaml())

    # -- records ----------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def record(self, run_id: str) -> RunRecord | None:
        return read_record(self.run_dir(run_id) / RECORD_FILE)

    def save(self, run_id: str, record: RunRecord) -> None:
        write_record(self.run_dir(run_id) / RECORD_FILE, record)

    def records(self) -> list[RunRecord]:
        """Every finished run's record, in folder order."""
        found = (read_record(p) for p in sorted((self.root / "runs").glob(f"*/{RECORD_FILE}")))
        return [r for r in found if r is not None]

    def forget_failed(self, run_ids: Iterable[str]) -> list[str]:
        """``--retry-failed``: drop the records of failed runs, so they run again; finished ones stay."""
        dropped = []
        for rid in run_ids:
            rec = self.record(rid)
            if rec is not None and not rec.completed:
                (self.run_dir(rid) / RECORD_FILE).unlink()
                dropped.append(rid)
        return dropped

    def todo(self, run_ids: Iterable[str]) -> list[str]:
        return [rid for rid in run_ids if self.record(rid) is None]

    def keep_lost(self, run_id: str, record: RunRecord) -> None:
        """An executor that lost a job (a killed worker) still returns why: record it."""
        if self.record(run_id) is None:
            self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
            self.save(run_id, record)

    # -- what runs share --------------------------------------------------------------------------
    def shared(self, model: str, seed: int | None = None) -> Path:
        """The cache shared by the runs of one model (and seed): probe scores, base-model metrics."""
        base = self.root / "shared" / model
        return base if seed is None else base / f"seed-{seed}"
