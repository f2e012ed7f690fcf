"""Output paths checked before any work starts: writable, with room, and not someone else's file."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import AletheiaError

MIN_FREE_BYTES = 64 * 2**20
"""Refuse to start with less free space than this where results will be written."""


DISK_FULL = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large"}
"""The errors of a disk that has run out of room, in the words a user is shown."""

_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating-system error behind ``exc``, or None.

    ``exc`` itself when it is an ``OSError``; else one that a library reported only in its message:
    safetensors' Rust writer raises ``SafetensorError('... No space left on device (os error 28)')``.
    """
    if isinstance(exc, OSError):
        return exc
    found = _OS_ERROR_IN_TEXT.search(str(exc))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def disk_full(exc: BaseException) -> str | None:
    """``"no space left on the disk"`` (or the quota / file-size words) when ``exc`` is a full disk."""
    err = os_error_of(exc)
    return DISK_FULL.get(err.errno) if err is not None else None  # type: ignore[arg-type]


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: str | Path, what: str = "--output", shown: str | Path | None = None) -> None:
    """Fail now, not after the model has loaded, when ``path`` cannot be written.

    A real test write catches read-only mounts and pseudo-filesystems, which ``os.access`` (and
    root) do not see; the free-space floor catches a full disk.
    """
    path = Path(path)
    name = f"{what} {shown or path}"
    if path.exists() and not path.is_dir():
        raise AletheiaError(f"{name} is a file, not a folder; choose a folder path")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise AletheiaError(f"{name}: {base} is a file, so no folder can be made there")
    try:
        probe = tempfile.mkdtemp(dir=base, prefix=".aletheia-write-test-")
        with open(Path(probe) / "x", "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
        shutil.rmtree(probe)
    except OSError as exc:
        raise AletheiaError(f"{name} cannot be written ({exc.strerror or exc} in {base}); "
                            "choose a writable folder") from None
    free = shutil.disk_usage(base).free
    if free < MIN_FREE_BYTES:
        raise AletheiaError(f"{name}: only {free / 2**20:.0f} MiB free on its disk; free some space "
                            f"(at least {MIN_FREE_BYTES // 2**20} MiB) or choose another folder")


def check_file_output(
    path: str | Path, is_ours: Callable[[Path], bool], overwrite: bool, what: str = "--output"
) -> None:
    """Refuse to replace a file this tool did not write (``is_ours(path)`` says), unless told to."""
    path = Path(path)
    if path.is_dir():
        raise AletheiaError(f"{what} {path} is a folder; pass a file path, e.g. {path / 'eval.json'}")
    if path.exists() and not overwrite and not is_ours(path):
        raise AletheiaError(f"{what} {path} already exists and was not written by this command; "
                            "pass --overwrite to replace it or choose another path")
    check_writable(path.parent, what, shown=path)
