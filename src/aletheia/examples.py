"""Training examples: what a row means, and reading the user's rows into ``Example``s.

Sources (``read_examples``): JSON arrays and JSONL files (read here, line by line, so a bad row is
named by its line), Parquet and CSV files, folders of them (split by file name as ``load_dataset``
does), folders written by ``save_to_disk`` and HF hub datasets (``data_sources.py``). ``data.columns``
renames a dataset's columns to the fields below.

Formats (detected per row):
- Alpaca: ``instruction``, optional ``input`` and ``system``, ``output``;
- chat: ``messages`` = list of ``{"role", "content"}`` ending with an assistant turn;
- ShareGPT: ``conversations`` = list of ``{"from", "value"}`` (roles human/gpt/system);
- plain text: ``text`` (loss on every token).

A malformed row is one error naming its file and row. ``data.py`` turns examples into tokens.
"""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .bootstrap import generate_bootstrap
from .errors import AletheiaError

MAX_EXAMPLE_CHARS = 1_000_000
"""Most characters of text one example (one row) may hold. ``max_length`` keeps a few hundred tokens
of it anyway; a row beyond this is a mistake (a whole corpus in one field, a binary pasted in) that
would otherwise spend gigabytes and minutes in the tokenizer without a word."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}
"""ShareGPT speaker names (``from``) and the chat roles they stand for."""


@dataclass
class Example:
    """One training example: chat ``messages`` (last one the answer) or plain ``text``."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    instruction: str | None = None  # kept for the Alpaca prompt when there is no chat template
    input: str = ""
    where: str = ""  # the file and row it came from, for messages

    @property
    def answer(self) -> str | None:
        return self.messages[-1]["content"] if self.messages else None


def _text_size(value: Any) -> int:
    """Characters of text in a parsed row (strings, nested in lists and mappings)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


def _too_large(where: str, size: int) -> AletheiaError:
    return AletheiaError(f"{where}: the row holds {size:,} characters, over the cap of "
                         f"{MAX_EXAMPLE_CHARS:,} per example (examples.MAX_EXAMPLE_CHARS); split or "
                         "trim it (training keeps only max_length tokens of each example anyway)")


def _as_text(value: Any) -> Any:
    """A number where text belongs (a CSV or Parquet answer column of numbers) is its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _chat_turns(turns: Any, key: str, where: str) -> list[dict[str, str]]:
    """``messages`` ({role, content}) or ShareGPT ``conversations`` ({from, value}) as chat messages."""
    if not isinstance(turns, list) or not turns:
        what = "{role, content}" if key == "messages" else "{from, value}"
        raise AletheiaError(f"{where}: '{key}' must be a non-empty list of {what}")
    out = []
    for n, m in enumerate(turns, start=1):
        if key == "messages":
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                _as_text(m.get("content")), str
            ):
                raise AletheiaError(f"{where}: every message needs string 'role' and 'content'")
            out.append({"role": m["role"], "content": _as_text(m["content"])})
            continue
        m = m if isinstance(m, dict) else {}
        speaker, value = m.get("from", m.get("role")), _as_text(m.get("value", m.get("content")))
        if not isinstance(speaker, str) or not isinstance(value, str):
            raise AletheiaError(f"{where}: turn {n} of 'conversations' needs string 'from' and 'value'")
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise AletheiaError(f"{where}: turn {n} of 'conversations' is from {speaker!r}; ShareGPT speakers "
                                f"are {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": value})
    if out[-1]["role"] != "assistant":
        raise AletheiaError(f"{where}: the last message must have role 'assistant' (the answer)")
    return out


def _row_to_example(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise AletheiaError(f"{where}: expected a JSON object, got {type(row).__name__}")
    size = _text_size(row)
    if size > MAX_EXAMPLE_CHARS:
        raise _too_large(where, size)
    system = _as_text(row.get("system")) or ""
    if not isinstance(system, str):
        raise AletheiaError(f"{where}: 'system' must be a string")
    system_turn = [{"role": "system", "content": system}] if system.strip() else []
    for key in ("messages", "conversations"):
        if key in row:
            msgs = _chat_turns(row[key], key, where)
            if msgs[0]["role"] == "system":
                system_turn = []
            return Example(messages=system_turn + msgs, where=where)
    if "instruction" in row or "output" in row:
        instr, out = _as_text(row.get("instruction")), _as_text(row.get("output"))
        inp = _as_text(row.get("input", "")) or ""
        if not isinstance(instr, str) or not instr.strip():
            raise AletheiaError(f"{where}: 'instruction' must be a non-empty string")
        if not isinstance(out, str) or not out.strip():
            raise AletheiaError(f"{where}: 'output' must be a non-empty string")
        if not isinstance(inp, str):
            raise AletheiaError(f"{where}: 'input' must be a string")
        user = instr if not inp.strip() else f"{instr}\n\n{inp}"
        return Example(
            messages=system_turn + [{"role": "user", "content": user}, {"role": "assistant", "content": out}],
            instruction=instr, input=inp, where=where,
        )
    if "text" in row:
        text = _as_text(row["text"])
        if not isinstance(text, str) or not text.strip():
            raise AletheiaError(f"{where}: 'text' must be a non-empty string")
        return Example(text=text, where=where)
    raise AletheiaError(
        f"{where}: row has none of the known fields (Alpaca 'instruction'/'output', chat 'messages', "
        f"ShareGPT 'conversations', or 'text'); its keys are {sorted(row)} (map yours with data.columns, "
        "e.g. --data-columns instruction=question,output=answer)"
    )


def read_examples(path: str | Path, columns: dict[str, str] | None = None, split: str = "train",
                  subset: str | None = None) -> list[Example]:
    """Read a data file, a folder of them, a saved dataset or an HF hub dataset into validated examples.

    ``columns``: our field -> the dataset's column (``{"instruction": "question"}``). ``split`` and
    ``subset`` (the dataset's configuration) choose what a folder or hub dataset holds; a single file
    is one split, read whole."""
    found, rows = _source_rows(path, split, subset)
    if columns:
        rows = _renamed(rows, columns, str(path), found)
    examples = [_row_to_example(row, where) for where, row in rows]
    if not examples:
        raise AletheiaError(f"{Path(path).expanduser()}: the dataset is empty; it needs at least 2 examples")
    return examples


def _looks_like_hub_id(path: str | Path) -> bool:
    from .data_sources import DATA_SUFFIXES

    return isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")) \
        and Path(path).suffix.lower() not in DATA_SUFFIXES


def _source_rows(path: str | Path, split: str, subset: str | None) -> tuple[list[str], Iterator]:
    """The column names and ``(where, row)`` pairs of whatever ``path`` is."""
    from . import data_sources as sources

    p = Path(path).expanduser()
    if not p.exists():
        if _looks_like_hub_id(path):
            return sources.hub_dataset(str(path), subset, split)
        raise AletheiaError(f"data file not found: {path} (pass an existing .json/.jsonl/.parquet/.csv file, "
                            "a folder of them or an HF dataset id to --data)")
    mode = os.stat(p).st_mode  # before opening: a FIFO or a device would block or never end
    if stat.S_ISDIR(mode):
        if sources.is_saved_dataset(p):
            return sources.saved_dataset(p, split)
        if subset is not None or _declares_configs(p):  # a dataset repository: its README says how to load it
            return sources.hub_dataset(str(p), subset, split)
        parts = [_file_rows(f) for f in sources.data_files(p, split)]
        found = list(dict.fromkeys(c for cols, _ in parts for c in cols))
        return found, (pair for _, rows in parts for pair in rows)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise AletheiaError(f"{path} is {kind}; pass a regular .json or .jsonl file to --data")
    if split != "train":
        raise AletheiaError(f"data.split '{split}': {path} is a single file, read whole; data.split chooses "
                            "a split of a folder or a hub dataset (pass the file of the split you want)")
    return _file_rows(p)


def _declares_configs(folder: Path) -> bool:
    """Whether the folder's README.md names dataset configurations (as a hub dataset repository does)."""
    readme = folder / "README.md"
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:65536] if readme.is_file() else ""
    except OSError:
        return False
    return head.startswith("---") and "\nconfigs:" in head.split("\n---", 1)[0]


def _file_rows(p: Path) -> tuple[list[str], Iterator]:
    from .data_sources import TABLE_SUFFIXES, table_file

    if p.suffix.lower() in TABLE_SUFFIXES:
        return table_file(p)
    rows = _json_rows(p)
    found = list(dict.fromkeys(k for _, row in rows if isinstance(row, dict) for k in row))
    return found, iter(rows)


def _json_rows(p: Path) -> list[tuple[str, Any]]:
    """A JSON array (or one object) or JSONL file, each row named by its record or line number."""
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AletheiaError(f"cannot read data file {p} ({exc.strerror or exc})") from None
    rows: list[tuple[str, Any]] = []
    if p.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AletheiaError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise AletheiaError(f"{p}: expected a JSON array of records")
        rows = [(f"{p}: record {i + 1}", row) for i, row in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > 2 * MAX_EXAMPLE_CHARS:  # surely over the cap: refuse before parsing it
                raise _too_large(f"{p}:{lineno}", len(line))
            try:
                rows.append((f"{p}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise AletheiaError(f"{p}:{lineno}: malformed JSON line ({exc.msg})") from None
    return rows


def _renamed(rows: Iterator, columns: dict[str, str], source: str, found: list[str]) -> Iterator:
    """Rows with the dataset's columns renamed to our fields; a column that is not there is refused
    up front, naming the columns that are."""
    missing = [f"'{col}' (for {ours})" for ours, col in columns.items() if col not in found]
    if missing:
        raise AletheiaError(f"data.columns: {source} has no column {', '.join(missing)}; its columns are "
                            f"{', '.join(found) or 'none'}")
    taken = set(columns) | set(columns.values())
    for where, row in rows:
        if isinstance(row, dict):  # a column named like a field it does not map to is dropped
            row = {k: v for k, v in row.items() if k not in taken} | {
                ours: row[col] for ours, col in columns.items() if col in row}
        yield where, row


def load_examples(data: Any = None, bootstrap_size: int = 600) -> list[Example]:
    """The user's data, or the generated bootstrap instruction set when there is none.

    ``data``: a ``DataConfig`` (its path, columns, split and subset), a path or hub id, or None."""
    if data is not None and not isinstance(data, (str, Path)):  # a DataConfig
        if data.path is None:
            return load_examples(None, data.bootstrap_size)
        return read_examples(data.path, data.columns, data.split, data.subset)
    if data is None:
        return [_row_to_example(r, "bootstrap") for r in generate_bootstrap(bootstrap_size, seed=0)]
    return read_examples(data)


def split_examples(
    examples: list[Example], eval_fraction: float, max_eval: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic train / held-out split from ``seed``."""
    if len(examples) < 2:
        raise AletheiaError(f"the dataset has {len(examples)} example(s); it needs at least 2")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, round(eval_fraction * len(examples))), len(examples) - 1)
    held = [examples[i] for i in sorted(order[:n_eval])]
    train = [examples[i] for i in sorted(order[n_eval:])]
    return train, held
