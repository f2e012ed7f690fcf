"""Small helpers shared by the stages: seeding, atomic writes, provenance."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed every RNG the run touches (python, numpy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$ALETHEIA_CACHE`` or ``~/.cache/aletheia``."""
    return Path(os.environ.get("ALETHEIA_CACHE") or Path.home() / ".cache" / "aletheia")


def timestamp() -> str:
    """Local time with its UTC offset, as every record's ``*_at`` field writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Atomic, and always valid JSON: a NaN or infinity becomes ``null``, listed under ``non_finite``."""
    found: list[str] = []
    data = finite_or_null(data, found)
    if found and isinstance(data, dict):
        data = {**data, "non_finite": found}
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """What a JSON file holds, or None when it is missing or unreadable (a run cut off mid-write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finite_or_null(obj: Any, found: list[str] | None = None, where: str = "") -> Any:
    """``obj`` with every non-finite float replaced by None (``found`` collects their key paths)."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        if found is not None:
            found.append(where or "(value)")
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v, found, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v, found, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


PACKAGES = ("aletheia", "torch", "transformers", "peft", "accelerate", "safetensors")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """The git commit of the Aletheia checkout, when it runs from one."""
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(device: str | None = None) -> torch.device:
    """The device asked for, checked to be there; none asked: CUDA when available, else CPU."""
    from .errors import AletheiaError

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise AletheiaError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise AletheiaError(f"--device {device}: {why}; use --device cpu (or leave --device out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AletheiaError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here "
                                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise AletheiaError(f"--device {device}: no Apple GPU (MPS) here; use --device cpu")
    elif dev.type != "cpu":
        raise AletheiaError(f"--device {device}: Aletheia runs on cpu, cuda or mps, not {dev.type}")
    return dev


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The precision most floating-point weights are in: the base model's (its adapters stay fp32)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def mixed_precision(dtype: torch.dtype, device: torch.device) -> AbstractContextManager:
    """Autocast for a bf16/fp16 base model, so its fp32 adapters compute in that precision too.

    Training, the probe, the cost model's timed steps and the evaluations all enter it, so a step is
    the same computation everywhere it is measured.
    """
    if dtype in (torch.bfloat16, torch.float16) and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
