"""Stopping a run at a step boundary when SIGTERM or SIGINT arrives, instead of mid-step.

Slurm sends SIGTERM shortly before it preempts a job. While a training loop runs inside
``graceful_stop()``, the CLI's signal handler only records the signal (``request_stop``); the loop
checks ``stop_requested()`` after each optimizer step, saves a checkpoint and raises
``RunInterrupted``. Outside a training loop, or on a second signal, the run stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_pending: list[str] = []
_loops: list[int] = [0]


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (Slurm's warning before preemption) or SIGINT stopped the run."""

    def __init__(self, message: str):
        super().__init__(message)
        _messages.append(message)


_messages: list[str] = []


def clear_interruptions() -> None:
    _messages.clear()
    _pending.clear()


def last_interruption() -> str | None:
    """What the last ``RunInterrupted`` said (for the CLI's one line)."""
    return _messages[-1] if _messages else None


def request_stop(signal_name: str) -> bool:
    """Record a signal; True when a training loop will stop at its next step boundary."""
    if _loops[0] and not _pending:  # a second signal is not waited for
        _pending.append(signal_name)
        return True
    return False


def stop_requested() -> str | None:
    """The signal a loop should stop for, if one arrived."""
    return _pending[0] if _pending else None


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Inside this block a signal waits for the step boundary."""
    _loops[0] += 1
    try:
        yield
    finally:
        _loops[0] -= 1
        _pending.clear()


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if not request_stop(name):  # else the training loop stops at its next step boundary
        raise RunInterrupted(name)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop a run cleanly while inside this block (the CLI wraps every verb)."""
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, _on_signal) for s in held}
    clear_interruptions()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
