"""Data parallelism across processes (``accelerate launch``/``torchrun``), designed so N processes
compute what one process would.

- The probe score of a layer is a sum over batches of per-batch gradient norms, and each batch's
  norm needs the whole batch. So each process probes whole batches (batch ``b`` goes to process
  ``b mod N``) and the per-batch norms are summed across processes: the scores equal the
  single-process ones.
- Training splits each optimizer step's ``grad_accum`` micro-batches across the processes and DDP
  averages the gradients, so N processes take the same optimizer steps as one process. That needs
  ``grad_accum`` to be a multiple of N.
- Only the main process writes files.

The launcher sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
``init_from_env`` starts the process group from them (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import AletheiaError


def launched() -> bool:
    """True when a launcher started several processes for this run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group the launcher describes; returns whether the run is distributed."""
    if not launched():
        return False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        if use_cuda:  # NCCL needs each process on its own GPU before the group starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """Each process of a multi-GPU run gets its own GPU (``LOCAL_RANK``)."""
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0  # before the group is joined


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place; a no-op in a single process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (so every process stops together)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def my_share(n: int) -> list[int]:
    """The indices of ``range(n)`` this process handles (round robin)."""
    return list(range(rank(), n, world_size()))


def check_grad_accum(grad_accum: int) -> None:
    n = world_size()
    if grad_accum % n:
        raise AletheiaError(
            f"grad_accum={grad_accum} must be a multiple of the {n} processes, so that they take the "
            f"same steps as one process; set train.grad_accum to {n * max(1, round(grad_accum / n))}"
        )
