"""The live progress view of ``aletheia campaign run``: done / running / failed, time, estimate left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ..runs import RunRecord


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressView:
    """One status line per event (to stderr); rewritten in place when stderr is a terminal."""

    def __init__(self, total: int, already: list[RunRecord], enabled: bool = True,
                 on_done: Callable[[], Any] | None = None):
        self.total, self.enabled, self.on_done = total, enabled, on_done
        self.done = sum(r.completed for r in already)
        self.failed = len(already) - self.done
        self.running: set[str] = set()
        self.start = time.time()
        self.finished_now = 0
        self.tty = sys.stderr.isatty()
        if enabled and already:
            self._print(f"resuming: {len(already)}/{total} runs already finished, skipped")

    def event(self, kind: str, job: Any, record: RunRecord | None) -> None:
        if kind == "start":
            self.running.add(job.run_id)
            last = f"started {job.label}"
        else:
            self.running.discard(job.run_id)
            self.finished_now += 1
            ok = record is not None and record.completed
            self.done += ok
            self.failed += not ok
            secs = record.wall_seconds if record is not None else None
            last = f"{'finished' if ok else 'FAILED'} {job.label}" + (f" ({fmt_seconds(secs)})" if secs else "")
            if not ok:
                last += f": {record.reason if record is not None else 'no record'}"
            if self.on_done:
                self.on_done()
        self._print(self.line(last), final=kind == "done")

    def line(self, last: str = "") -> str:
        elapsed = time.time() - self.start
        left = self.total - self.done - self.failed
        eta = elapsed / self.finished_now * left if self.finished_now else None
        return (f"[{self.done + self.failed}/{self.total}] done {self.done} · running {len(self.running)} · "
                f"failed {self.failed} · {fmt_seconds(elapsed)} so far · ~{fmt_seconds(eta)} left"
                + (f" · {last}" if last else ""))

    def _print(self, text: str, final: bool = True) -> None:
        if not self.enabled:
            return
        end = "" if self.tty and not final else "\n"  # on a terminal the next line overwrites this one
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + end)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._print(f"campaign finished: {self.done} completed, {self.failed} failed, "
                        f"{fmt_seconds(time.time() - self.start)}")
