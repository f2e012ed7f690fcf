"""Training checkpoints: everything an exact resume needs, written atomically.

``checkpoints/step-00000040/`` holds the trainable (adapter) weights as safetensors and
``state.pt`` with the optimizer, scheduler and loss-scaler states, the step, the metrics so far and
the RNG states (python, numpy, torch CPU and CUDA) of every process (``rng-RANK.pt``). With them a
resumed run draws the same batches, the same dropout masks and takes the same optimizer steps, so
its per-step losses and final adapter equal an uninterrupted run's. A checkpoint folder is written
under a temporary name and renamed when complete: the newest complete one is always usable.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import distributed
from .errors import AletheiaError

PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, model, optimizer, scheduler, scaler, history: dict,
                    keep_last: int) -> Path | None:
    """Write ``folder/step-N`` (every process its RNG state, the main process the rest); prune."""
    target = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".{target.name}.tmp"
    main = distributed.is_main_process()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    torch.save(rng_state(), tmp / f"rng-{distributed.rank()}.pt")
    if main:
        save_file(trainable_state(model), str(tmp / "adapter.safetensors"))
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "history": history}, tmp / "state.pt")
    distributed.barrier()
    if not main:
        return None
    os.replace(tmp, target)
    for old in checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore a checkpoint into the run's objects; returns its ``history``."""
    weights = load_file(str(path / "adapter.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(weights))
    if missing:
        raise AletheiaError(f"checkpoint {path} does not hold this run's adapter ({len(missing)} weights "
                            f"missing, e.g. {missing[0]}); it belongs to a different setting: rerun with --overwrite")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = path / f"rng-{distributed.rank()}.pt"
    if not rng.is_file():
        raise AletheiaError(f"checkpoint {path} has no RNG state for process {distributed.rank()}: it was "
                            "written by a run with fewer processes; resume with the same launch")
    set_rng_state(torch.load(rng, weights_only=True))
    return state["history"]
