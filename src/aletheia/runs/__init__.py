"""The layer above the core that every verb, campaign and search writes its results through."""

from .folder import RunFolder, RunInterrupted, finished_run, read_state, unfinished_run

__all__ = ["RunFolder", "RunInterrupted", "finished_run", "read_state", "unfinished_run"]
