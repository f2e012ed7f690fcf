"""The layer above the core: run folders, run records and the store campaigns and searches share.

Imports point down only: ``runs`` uses the core (``utils``, ``errors``, ``outputs``, ``tables``),
and ``campaign``, ``search`` and the CLI use ``runs``.
"""

from ..tables import finite
from .folder import RunFolder, RunInterrupted, finished_run, read_state, unfinished_run
from .record import RunRecord, read_record, write_record
from .store import RECORD_FILE, RunStore

__all__ = ["RECORD_FILE", "RunFolder", "RunInterrupted", "RunRecord", "RunStore", "finished_run", "finite",
           "read_record", "read_state", "unfinished_run", "write_record"]
