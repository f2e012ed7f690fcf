"""Where rows come from, through the ``datasets`` library: Parquet and CSV files, folders of data
files, folders written by ``save_to_disk``, and hub datasets (with a configuration and a split).

Each source yields ``(where, row)`` pairs; ``where`` names the file (or dataset and split) and the
row, so a malformed row is reported where the user can find it. JSON and JSONL files are read by
``examples.py``, line by line, for the same reason: pyarrow's JSON reader names no line and
refuses rows whose fields differ. ``datasets`` is imported only when one of these sources is used
(it takes seconds to import).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

from .errors import AletheiaError

ROW_FIELDS = ("instruction", "input", "output", "system", "messages", "conversations", "text")
"""The fields a row may have; ``data.columns`` maps a dataset's own column names to them."""
JSON_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}
DATA_SUFFIXES = (*JSON_SUFFIXES, *TABLE_SUFFIXES)
Rows = Iterator[tuple[str, dict[str, Any]]]


def _datasets():
    try:
        import datasets
    except ImportError:
        raise AletheiaError("reading Parquet, CSV, saved or hub datasets needs the 'datasets' package: "
                            "pip install datasets") from None
    return datasets


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _rows(ds, label: str) -> Rows:
    """Rows of a ``datasets.Dataset`` as plain dicts; empty cells (None) are left out."""
    for i, row in enumerate(ds, start=1):
        yield f"{label} row {i}", {k: v for k, v in row.items() if v is not None}


def table_file(path: Path) -> tuple[list[str], Rows]:
    """The columns and rows of one Parquet or CSV file."""
    datasets = _datasets()
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    extra: dict[str, Any] = {}
    if kind == "csv":  # every cell as text: "007" stays "007" and an empty cell stays ""
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise AletheiaError(f"cannot read {path} ({exc})") from None
        if not header:
            raise AletheiaError(f"{path}: the CSV file is empty; it needs a header row and at least 2 rows")
        extra = {"keep_default_na": False,
                 "features": datasets.Features({c: datasets.Value("string") for c in header})}
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", **extra)
    except Exception as exc:  # a corrupt file or a ragged CSV: one line naming it
        raise AletheiaError(f"cannot read {path} as {kind.upper()}: {_first_line(exc)}") from None
    return list(ds.column_names), _rows(ds, str(path))


def saved_dataset(path: Path, split: str) -> tuple[list[str], Rows]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise AletheiaError(f"cannot load the saved dataset in {path}: {_first_line(exc)}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise AletheiaError(f"{path} has the splits {', '.join(ds)}, not '{split}'; choose one with "
                                "--data.split")
        ds = ds[split]
    return list(ds.column_names), _rows(ds, f"{path} ({split})")


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def data_files(folder: Path, split: str) -> list[Path]:
    """The folder's data files of ``split``, found as ``load_dataset`` finds them (``train.jsonl``,
    ``data/train-00000-of-00002.parquet``, ``test/*.csv``; files named after no split are train)."""
    has_data = any(f.suffix.lower() in DATA_SUFFIXES and f.is_file() for f in folder.rglob("*"))
    found = _split_files(folder) if has_data else {}  # none: said before datasets is imported (seconds)
    if not found:
        raise AletheiaError(f"{folder} is a folder with no data files ({', '.join(DATA_SUFFIXES)}) and no "
                            "dataset saved with save_to_disk; pass a data file or such a folder to --data")
    if split not in found:
        raise AletheiaError(f"{folder} holds the splits {', '.join(found)}, not '{split}'; choose one with "
                            "--data.split")
    return found[split]


def _split_files(folder: Path) -> dict[str, list[Path]]:
    _datasets()
    from datasets.data_files import DataFilesDict, get_data_patterns

    base = str(folder.resolve())
    try:
        found = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base,
                                            allowed_extensions=list(DATA_SUFFIXES))
    except FileNotFoundError:  # no file of a known split pattern (EmptyDatasetError and its kin)
        found = {}
    found = {str(k): [Path(f) for f in v if Path(f).suffix.lower() in DATA_SUFFIXES] for k, v in found.items()}
    return {k: sorted(v) for k, v in found.items() if v}


def hub_dataset(name: str, subset: str | None, split: str) -> tuple[list[str], Rows]:
    """``load_dataset(name, subset, split=split)``: a hub id, or a local dataset repository (a folder
    whose README declares its configurations)."""
    datasets = _datasets()
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # network, missing dataset, auth, unknown config or split: one line
        what = f"'{name}'" + (f" (subset '{subset}')" if subset else "")
        raise AletheiaError(f"could not load HF dataset {what}, split '{split}': {_first_line(exc)}") from None
    label = name + (f"/{subset}" if subset else "")
    return list(ds.column_names), _rows(ds, f"{label} ({split})")
