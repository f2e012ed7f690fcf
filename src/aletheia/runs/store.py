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

    def todo(self, jobs: Iterable[Any], retry_failed: bool = False) -> list[Any]:
        """The jobs (anything with a ``run_id``) that have no record yet; ``retry_failed`` (the
        ``--retry-failed`` flag) first drops the records of failed runs, so they run again."""
        jobs = list(jobs)
        for job in jobs if retry_failed else []:
            rec = self.record(job.run_id)
            if rec is not None and not rec.completed:
                (self.run_dir(job.run_id) / RECORD_FILE).unlink()
        return [job for job in jobs if self.record(job.run_id) is None]

    def run(self, executor: Any, fn: Callable[[Any], RunRecord], jobs: list[Any],
            on_event: Callable | None = None) -> list[RunRecord]:
        """``executor.map(fn, jobs, on_event)``; a job the executor lost (a killed worker) still comes
        back as a failed record saying why, and is recorded here."""
        records = executor.map(fn, jobs, on_event) if jobs else []
        for job, record in zip(jobs, records):
            if self.record(job.run_id) is None:
                self.save(job.run_id, record)
        return records

    # -- what runs share --------------------------------------------------------------------------
    def shared(self, model: str, seed: int | None = None) -> Path:
        """The cache shared by the runs of one model (and seed): probe scores, base-model metrics."""
        base = self.root / "shared" / model
        return base if seed is None else base / f"seed-{seed}"
