"""Training checkpoints: everything an exact resume needs, written atomically.

``checkpoints/step-00000040/`` holds the trainable (adapter) weights as safetensors and
``state.pt`` with the optimizer, scheduler and loss-scaler states, the step, the metrics so far and
the RNG states (python, numpy, torch CPU and CUDA) of every process (``rng-RANK.pt``). With them a
resumed run draws the same batches, the same dropout masks and takes the same optimizer steps, so
its per-step losses and final adapter equal an uninterrupted run's. A checkpoint folder is written
under a temporary name and renamed when complete: the newest complete one is always usable.

The format is ours, not ``Accelerator.save_state``'s: that one writes the whole model, base weights
included (14 GB per checkpoint for a 7B LoRA run); this one holds the adapter only. Under FSDP2 the
adapter and the optimizer state are gathered whole (``DTensor.full_tensor``, torch's
``get_optimizer_state_dict``) and sharded again on load, so the files are the same as one process's.
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
    """The adapter weights, whole (a collective under FSDP2: every process must call it)."""
    return {n: _whole(p).detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _optimizer_state(model, optimizer) -> dict:
    if not distributed.sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer.optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(folder: Path, step: int, accelerator, model, optimizer, scheduler, history: dict,
                    keep_last: int) -> Path | None:
    """Write ``folder/step-N`` (every process its RNG state, the main process the rest); prune."""
    target = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".{target.name}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    weights, optim = trainable_state(model), _optimizer_state(model, optimizer)
    if main:
        save_file(weights, str(tmp / "adapter.safetensors"))
        scaler = accelerator.scaler
        torch.save({"step": step, "optimizer": optim, "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "history": history},
                   tmp / "state.pt")
    accelerator.wait_for_everyone()
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


def load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint into the run's (prepared) objects; returns its ``history``."""
    weights = load_file(str(path / "adapter.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(weights))
    if missing:
        raise AletheiaError(f"checkpoint {path} does not hold this run's adapter ({len(missing)} weights "
                            f"missing, e.g. {missing[0]}); it belongs to a different setting: rerun with --overwrite")
    with torch.no_grad():
        for name, tensor in weights.items():
            p = params[name]
            if hasattr(p, "device_mesh"):  # an FSDP2 shard: keep this process's slice
                from torch.distributed.tensor import distribute_tensor

                tensor = distribute_tensor(tensor.to(p.device), p.device_mesh, p.placements)
            p.copy_(tensor.to(p.device))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if distributed.sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state["scaler"] is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rank = accelerator.process_index
    rng = path / f"rng-{rank}.pt"
    if not rng.is_file():
        raise AletheiaError(f"checkpoint {path} has no RNG state for process {rank}: it was "
                            "written by a run with fewer processes; resume with the same launch")
    set_rng_state(torch.load(rng, weights_only=True))
    return state["history"]
