"""Data parallelism and sharding across processes (``accelerate launch``/``torchrun``), designed so
N processes compute what one process would.

- The probe score of a layer is a sum over batches of per-batch gradient norms, and each batch's
  norm needs the whole batch. So each process probes whole batches (batch ``b`` goes to process
  ``b mod N``) and the per-batch norms are summed across processes: the scores equal the
  single-process ones. A model sharded with FSDP2 is probed batch by batch on every process
  together instead, each process adding up the squared norms of its own shards (``probe.py``).
- Training runs through an ``accelerate.Accelerator`` (``make_accelerator``): precision, loss
  scaling, gradient accumulation, DDP or FSDP2. Each optimizer step's ``grad_accum`` micro-batches
  are split across the processes and the gradients averaged, so N processes take the same optimizer
  steps as one process. That needs ``grad_accum`` to be a multiple of N.
- Only the main process writes files.

The launcher sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
``init_from_env`` starts the process group from them (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

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


def fsdp_requested(train_fsdp: bool) -> bool:
    """``train.fsdp``, or ``accelerate launch --use_fsdp`` (which says so in the environment)."""
    return train_fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(dtype: torch.dtype, device: torch.device, grad_accum: int, fsdp: bool = False,
                     blocks: list[str] | None = None):
    """The ``Accelerator`` of one training run: ``dtype``'s autocast and loss scaling, ``grad_accum``
    split over the processes, and DDP, FSDP2 (``fsdp``, each decoder block class in ``blocks`` its own
    shard unit) or DeepSpeed (``accelerate launch --use_deepspeed``) when launched so.

    accelerate keeps its settings in process-wide singletons; a process that trains several runs
    (``compare``, the tests, a notebook) gets each run's own by resetting them first. The process
    group itself is kept. Two settings accelerate leaves to the launcher are fixed here, because N
    processes must take the steps of one: the accumulation count (``grad_accum / N`` micro-batches per
    process, whatever ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` says) and the placement (the model
    stays on the device the run put it on).
    """
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DistributedType, GradientAccumulationPlugin

    AcceleratorState._reset_state(reset_partial_state=not dist.is_initialized())
    GradientState._reset_state()
    PartialState(cpu=device.type == "cpu")  # joins the launcher's process group if not joined yet
    check_grad_accum(grad_accum)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    plugin = None
    if fsdp and active():
        if os.environ.get("FSDP_VERSION", "2") != "2":
            raise AletheiaError("FSDP1 is not supported (its flat parameters hide the per-block gradients "
                                "the probe and the clipping need); launch with --fsdp_version 2")
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                transformer_cls_names_to_wrap=blocks)
    env = os.environ.get("ACCELERATE_USE_FSDP")
    acc = Accelerator(mixed_precision=precision, cpu=device.type == "cpu", device_placement=False,
                      fsdp_plugin=plugin, step_scheduler_with_optimizer=False,
                      gradient_accumulation_plugin=GradientAccumulationPlugin(
                          num_steps=grad_accum // world_size(), sync_with_dataloader=False))
    _restore_env("ACCELERATE_USE_FSDP", env)  # a plugin sets it for the whole process: not for later runs
    if plugin is not None and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate enables FSDP for GPU launches only; torch's FSDP2 runs on CPU processes (gloo) as
        # well, so a CPU launch gets the state accelerate sets for a GPU one
        acc.state.distributed_type, acc.state.fsdp_plugin = DistributedType.FSDP, plugin
        if precision != "no":
            plugin.set_mixed_precision(precision)
    if precision == "fp16" and acc.scaler is None and device.type == "cpu":
        # accelerate turns fp16 off on CPUs; torch autocasts and scales there too, as before accelerate
        acc.native_amp, acc.scaler = True, torch.amp.GradScaler("cpu")
    return acc


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def sharded(model: nn.Module) -> bool:
    """True for a model whose parameters FSDP2 sharded (``DTensor`` s: each process holds a slice)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
