"""Output folders that cannot lose data: staged, locked, and marked with their state.

A run never writes into its target folder while it works. It writes into ``TARGET/.partial/``
and, once complete, moves each of its files up into ``TARGET`` (signals held off for those few
renames) and writes ``run_state.json`` last, listing the files it owns. So:

- a crash, a kill or a bad input mid-run leaves the previous content of ``TARGET`` as it was;
- ``--overwrite`` replaces a finished run only at that last moment, and only the files that run's
  ``run_state.json`` lists (or, for folders written before the state file existed, the names
  Aletheia writes); a folder holding anything else is refused, never emptied;
- files in ``TARGET`` that Aletheia did not write are never touched;
- ``TARGET/.aletheia.lock`` (``flock``) keeps a second process out: it gets one line and exit 2;
- ``TARGET/.partial/run_state.json`` says ``running`` / ``interrupted`` / ``failed`` while the
  run is unfinished, so an unfinished run is never mistaken for a finished one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

from ..errors import AletheiaError
from ..interrupts import RunInterrupted  # noqa: F401 (re-exported)
from ..outputs import check_writable, disk_full
from ..utils import read_json, timestamp, write_json

STATE_FILE = "run_state.json"
STAGING = ".partial"
LOCK_FILE = ".aletheia.lock"
REPLACED = ".replaced"

FINISHED = ("completed", "failed")
# What run folders written before run_state.json hold; --overwrite may replace exactly these.
LEGACY_FILES = frozenset({
    "config.yaml", "summary.json", "metrics.jsonl", "probe.json", "probe_scores.png",
    "adapter_model.safetensors", "adapter_config.json", "README.md", "accuracy_samples.json",
    "comparison.json", "comparison.md", "eval.json", "standard", "aletheia", "tensorboard",
})
LEGACY_MARKERS = ("summary.json", "comparison.json")


_ABANDONED: list[Path] = []


def clear_abandoned() -> None:
    _ABANDONED.clear()


def last_abandoned() -> Path | None:
    """The staging folder the last unfinished run was kept in (for the CLI's one line)."""
    return _ABANDONED[-1] if _ABANDONED else None


def read_state(folder: str | Path) -> dict | None:
    """The state a folder's ``run_state.json`` records, or None."""
    state = read_json(Path(folder) / STATE_FILE)
    return state if isinstance(state, dict) else None


def finished_run(folder: str | Path) -> dict | None:
    """The finished run a folder holds: its state with the files it owns, or None.

    A folder from before ``run_state.json`` counts when it has ``config.yaml`` and a summary.
    """
    folder = Path(folder)
    state = read_state(folder)
    if state is not None and state.get("status") in FINISHED:
        return state
    if (folder / "config.yaml").is_file() and any((folder / m).is_file() for m in LEGACY_MARKERS):
        names = sorted(p.name for p in folder.iterdir() if p.name in LEGACY_FILES)
        return {"status": "completed", "files": names, "legacy": True}
    return None


def unfinished_run(folder: str | Path) -> dict | None:
    """The state of the unfinished run staged in ``folder/.partial``, or None."""
    staging = Path(folder) / STAGING
    if not staging.is_dir():
        return None
    state = read_state(staging) or {"status": "interrupted"}
    if state.get("status") == "running" and not _lock_is_held(Path(folder)):
        state["status"] = "interrupted"  # killed without a chance to say so
    return state


def _lock_is_held(folder: Path) -> bool:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class RunFolder:
    """``with RunFolder(target, overwrite) as staging:`` write the run into ``staging``.

    ``commit(status)`` moves it into ``target``. Leaving the block without a commit (an error, a
    kill, Ctrl-C) keeps the staged files in ``target/.partial`` marked ``failed``/``interrupted``
    and removes anything the attempt created that holds nothing; a full disk removes the staged
    files too (no run can be finished from them, and the user must free that room).
    ``active=False`` (the non-main processes of a data-parallel launch) writes nothing.
    """

    def __init__(self, target: str | Path, overwrite: bool = False, kind: str = "run", active: bool = True,
                 resume: bool = False):
        self.target = Path(target)
        self.staging = self.target / STAGING
        self.overwrite, self.kind, self.active, self.resume = overwrite, kind, active, resume
        self._lock_fd: int | None = None
        self._created: list[Path] = []
        self.committed = False

    # -- before anything is loaded ----------------------------------------------------------------
    def check(self) -> "RunFolder":
        """Every reason this run could not be written, found before a model loads."""
        if not self.active:
            return self
        check_writable(self.target)
        if self.resume:
            return self._check_resume()
        if not self.target.is_dir():
            return self
        old = finished_run(self.target)
        if old is not None and not self.overwrite:
            raise AletheiaError(f"{self.target} already holds a finished run; pass --overwrite to replace "
                                "it or choose another --output")
        owned = set(old.get("files", [])) | {STATE_FILE} if old is not None else set()
        if old is not None and old.get("legacy"):
            foreign = sorted(p.name for p in self.target.iterdir()
                             if p.name not in owned and not p.name.startswith("."))
            if foreign:
                raise AletheiaError(f"{self.target} holds files that are not part of its run "
                                    f"({', '.join(foreign[:5])}); --overwrite replaces only a run folder "
                                    "Aletheia wrote; move them or choose another --output")
        pending = unfinished_run(self.target)
        if pending is not None:
            if pending["status"] == "running":
                raise AletheiaError(self._busy_message())
            if not self.overwrite:
                raise AletheiaError(f"{self.target} holds an unfinished run ({pending['status']}, in "
                                    f"{self.staging}); pass --overwrite to discard it and start again, "
                                    "or choose another --output")
        clash = sorted(n for n in (LEGACY_FILES | {STATE_FILE}) - owned if (self.target / n).exists())
        if clash:  # a name a run writes, taken by a file no run of ours owns: found before loading
            if old is None:
                raise AletheiaError(f"{self.target} already has {', '.join(clash[:5])}, not written by an "
                                    "Aletheia run; --overwrite replaces only a run folder Aletheia wrote; "
                                    "choose another --output")
            raise AletheiaError(f"{self.target} has {', '.join(clash[:5])}, not written by its run; "
                                "--overwrite replaces only the run's own files: move those and rerun")
        return self

    def _check_resume(self) -> "RunFolder":
        pending = unfinished_run(self.target) if self.target.is_dir() else None
        if pending is None:
            done = finished_run(self.target) if self.target.is_dir() else None
            why = "already holds a finished run" if done else "holds no unfinished run"
            raise AletheiaError(f"--resume: {self.target} {why}; drop --resume to start a new run")
        if pending["status"] == "running":
            raise AletheiaError(self._busy_message())
        return self

    def _busy_message(self) -> str:
        pid = (read_state(self.staging) or {}).get("pid")
        holder = f" (pid {pid})" if pid else ""
        return (f"another aletheia process is writing to {self.target}{holder}; wait for it to finish "
                "or choose another --output")

    # -- the run ----------------------------------------------------------------------------------
    def __enter__(self) -> Path:
        if not self.active:
            return self.staging
        self.check()
        self._mkdir(self.target)
        self._lock()
        try:
            if self.staging.exists() and not self.resume:  # an unfinished run --overwrite discards
                shutil.rmtree(self.staging)
            self.staging.mkdir(exist_ok=self.resume)
            self._write_state(self.staging, "running")
        except BaseException as exc:  # a full disk already here: release the lock, leave nothing behind
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.active:
            return False
        try:
            if not self.committed:
                self._abandon(exc_type, exc)
        finally:
            self._unlock()
        return False

    def commit(self, status: str = "completed") -> Path:
        """Move the staged run into ``target``; a failed run never replaces a finished one."""
        if not self.active:
            return self.target
        old = finished_run(self.target)
        if status != "completed" and old is not None:
            self._write_state(self.staging, status)
            self.committed = True
            raise AletheiaError(f"the new run {status}; the finished run in {self.target} was kept and the "
                                f"new one is in {self.staging}")
        owned = set(old.get("files", [])) if old is not None else set()
        clash = sorted(p.name for p in self.staging.iterdir()
                       if p.name != STATE_FILE and p.name not in owned and (self.target / p.name).exists())
        if clash:  # a file of the user's where the new run would put one of its own: never replace it
            self._write_state(self.staging, "failed")
            self.committed = True
            raise AletheiaError(f"{self.target} has {', '.join(clash[:5])}, not written by its run; the "
                                f"new run was kept in {self.staging}: move those files and rerun")
        self._write_state(self.staging, status, final=True)
        with signals_held():
            if old is not None:
                aside = self.target / REPLACED
                if aside.exists():
                    shutil.rmtree(aside)
                aside.mkdir()
                for name in [*old.get("files", []), STATE_FILE]:
                    if (self.target / name).exists():
                        os.replace(self.target / name, aside / name)
            for name in sorted(p.name for p in self.staging.iterdir() if p.name != STATE_FILE):
                os.replace(self.staging / name, self.target / name)
            os.replace(self.staging / STATE_FILE, self.target / STATE_FILE)
            self.committed = True
            shutil.rmtree(self.staging, ignore_errors=True)
            if old is not None:
                shutil.rmtree(self.target / REPLACED, ignore_errors=True)
        return self.target

    def _abandon(self, exc_type, exc: BaseException | None = None) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        staged = [p for p in self.staging.iterdir() if p.name != STATE_FILE] if self.staging.is_dir() else []
        # a run stopped by a full disk cannot be finished from its staged files: they would only hold
        # the room the user has to free, and make the rerun ask for --overwrite
        resumable = any((self.staging / "checkpoints").glob("step-*"))  # never thrown away
        worth_keeping = resumable or (any(p.name != "config.yaml" for p in staged)
                                      and not (exc is not None and disk_full(exc)))
        if worth_keeping:
            try:
                self._write_state(self.staging, status)
            except OSError:
                pass  # a full disk: the state then reads as interrupted, which is still true
            _ABANDONED.append(self.staging)
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        for path in reversed(self._created):  # leave no empty folder behind a run that wrote nothing
            try:
                (path / LOCK_FILE).unlink(missing_ok=True)
                path.rmdir()
            except OSError:
                break

    def _write_state(self, folder: Path, status: str, final: bool = False) -> None:
        state = {"status": status, "kind": self.kind, "pid": os.getpid(), "host": socket.gethostname(),
                 "updated_at": timestamp()}
        if final:
            state["files"] = sorted(p.name for p in folder.iterdir() if p.name != STATE_FILE)
        write_json(folder / STATE_FILE, state)

    def _mkdir(self, path: Path) -> None:
        p = path.absolute()
        self._created = [d for d in reversed([p, *p.parents]) if not d.exists()]  # outermost first
        path.mkdir(parents=True, exist_ok=True)

    def _lock(self) -> None:
        path = self.target / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise AletheiaError(self._busy_message()) from None
                raise
            try:  # the file we locked may have been unlinked by the previous holder: lock the new one
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    self._lock_fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        if self.committed or not self.staging.exists():
            (self.target / LOCK_FILE).unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None


@contextmanager
def signals_held():
    """Hold SIGINT/SIGTERM for the few renames that swap a run in, so no signal splits them."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
