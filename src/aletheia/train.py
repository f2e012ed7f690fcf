"""The training loop shared by standard LoRA and Aletheia: the same recipe for both (paper §3.4).

AdamW, linear warmup then cosine decay, gradient accumulation, global-norm clipping, a fixed number
of optimizer steps. A non-finite loss ends the run with status ``failed`` and the step and reason,
rather than a crash (the paper's Pythia fp16 case).

Precision: bf16 and fp16 run under autocast (the base weights are already in that dtype; PEFT keeps
the adapters in fp32), and fp16 scales the loss so small gradients do not underflow.
Data parallel (``distributed.py``): the micro-batches of each step are split across processes and
DDP averages their gradients, so N processes take the same steps as one.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import train_batches
from .interrupts import RunInterrupted, stop_requested
from .lm_loss import causal_lm_loss
from .utils import mixed_precision


@dataclass
class TrainResult:
    status: str  # "completed" or "failed"
    steps_done: int
    train_seconds: float
    median_step_seconds: float
    tokens_per_second: float
    peak_memory_bytes: int
    peak_memory_kind: str
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    failure: dict | None = None
    loss_scale: float | None = None
    """fp16 only: the loss scale at the end (it drops when scaled gradients overflow)."""
    processes: int = 1
    """Data-parallel processes that shared the steps."""
    resumed_from_step: int | None = None
    """The checkpoint's step when the run was resumed (the steps before it were not trained again)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        return d


def reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak reading for this training loop.

    CUDA: reset the allocator's peak. Linux CPU: writing 5 to /proc/self/clear_refs resets the
    process's resident-set high-water mark (VmHWM), so two runs in one process (``compare``) each
    report their own peak. Returns False where no reset is possible (the reading then covers the
    whole process).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory: allocated CUDA bytes on a GPU, else the peak resident set (VmHWM on Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "process_peak_rss"
    except OSError:
        pass
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return int(rss_kb * (1 if sys.platform == "darwin" else 1024)), "process_max_rss"


def train_lora(
    model: nn.Module,
    items: list[dict[str, list[int]]],
    cfg: TrainConfig,
    seed: int,
    pad_id: int,
    metrics_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    label: str = "train",
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    tracker=None,
    evaluate: Callable[[], float] | None = None,
) -> TrainResult:
    """Train the trainable (adapter) parameters of ``model`` for ``cfg.steps`` optimizer steps.

    ``checkpoint_dir``: save a checkpoint every ``cfg.save_every`` steps, and at the step boundary
    after a SIGTERM/SIGINT (then raise ``RunInterrupted``). ``resume_from``: a checkpoint to
    continue from, exactly where it stopped. ``tracker``: anything with ``log(values, step)`` (the
    run's ``trackers.Trackers``) gets each step's metrics as ``train/<name>``, plus tokens/s.
    ``evaluate``: the held-out loss, computed every ``cfg.eval_every`` steps and at the last step
    (its time is not training time)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    autocast = mixed_precision(dtype, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type in ("cuda", "cpu"))
    step_times, losses, tokens, failure, records, before = [], [], 0, None, [], 0.0
    done = 0
    if resume_from is not None:  # weights, optimizer, schedule, RNG and metrics as they were
        history = load_checkpoint(resume_from, model, optimizer, scheduler, scaler)
        done, records = history["step"], history["metrics"]
        step_times, losses = [r["step_seconds"] for r in records], [r["loss"] for r in records]
        tokens, before = history["tokens"], history["train_seconds"]
    batches = train_batches(items, cfg.batch_size, seed, pad_id, skip=done * cfg.grad_accum)
    # data parallel: this process takes micro-batches i with i % N == rank of every step
    distributed.check_grad_accum(cfg.grad_accum)
    n_proc = distributed.world_size()
    mine = set(distributed.my_share(cfg.grad_accum))
    last_mine = max(mine)
    forward = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    metrics = open(metrics_path, "w") if metrics_path else None
    if metrics:  # a resumed run's file starts with the steps it had done
        metrics.writelines(json.dumps(r) + "\n" for r in records)
    reset_peak_memory(device)

    model.train()
    bar = tqdm(total=cfg.steps, initial=done, desc=label, disable=not progress)
    start, eval_seconds = time.perf_counter(), 0.0
    for step in range(done + 1, cfg.steps + 1):
        t0, tokens0 = time.perf_counter(), tokens
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            batch = next(batches)  # every process draws every batch, so the streams stay aligned
            if micro not in mine:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            # DDP averages gradients over the N processes; the factor N restores the plain sum
            sync = micro == last_mine or not distributed.active()
            with autocast, (nullcontext() if sync else forward.no_sync()):
                loss = causal_lm_loss(model, batch, forward) / cfg.grad_accum
                bad = distributed.any_process(not torch.isfinite(loss), device)
                if not bad:
                    scaler.scale(loss * n_proc).backward()
            if bad:
                failure = {"step": step, "reason": f"non-finite loss ({loss.item()}) at step {step}"}
                break
            step_loss += loss.item()
            tokens += int(batch["attention_mask"].sum())
        if failure:
            optimizer.zero_grad(set_to_none=True)
            break
        if n_proc > 1:
            step_loss = float(distributed.sum_across_processes(torch.tensor([step_loss], device=device)))
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest step times: wait for the GPU
        dt = time.perf_counter() - t0
        step_times.append(dt)
        losses.append(step_loss)
        record = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                  "grad_norm": float(grad_norm), "step_seconds": dt}
        if evaluate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            t_eval = time.perf_counter()
            with torch.no_grad():  # eval mode, no RNG drawn: resumed runs stay exact
                record["eval_loss"] = evaluate()
            eval_seconds += time.perf_counter() - t_eval
        records.append(record)
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if tracker is not None:  # reads numbers only: no RNG, so resumed runs stay exact
            tracker.log({f"train/{k}": v for k, v in record.items() if k not in ("step", "eval_loss")}
                        | {"train/tokens_per_second": (tokens - tokens0) / dt}
                        | ({"eval/loss": record["eval_loss"]} if "eval_loss" in record else {}), step)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{step_loss:.4f}")
        stop = stop_requested()
        if checkpoint_dir is not None and (stop or (cfg.save_every and step % cfg.save_every == 0)):
            history = {"step": step, "metrics": records, "tokens": tokens,
                       "train_seconds": before + time.perf_counter() - start - eval_seconds}
            save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, scaler, history, cfg.keep_last)
        if stop:
            bar.close()
            saved = "checkpoint saved" if checkpoint_dir is not None else "no checkpoint"
            raise RunInterrupted(f"{stop} at step {step}/{cfg.steps}, {saved}")
    train_seconds = before + time.perf_counter() - start - eval_seconds
    bar.close()
    if metrics:
        metrics.close()
    mem, kind = peak_memory(device)
    return TrainResult(
        status="failed" if failure else "completed",
        steps_done=len(step_times),
        train_seconds=train_seconds,
        median_step_seconds=statistics.median(step_times) if step_times else math.nan,
        tokens_per_second=tokens / train_seconds if train_seconds > 0 else 0.0,
        peak_memory_bytes=mem,
        peak_memory_kind=kind,
        final_loss=losses[-1] if losses else None,
        losses=losses,
        failure=failure,
        loss_scale=float(scaler.get_scale()) if scaler.is_enabled() else None,
        processes=n_proc,
        resumed_from_step=done if resume_from is not None else None,
    )

