"""The training loop shared by standard LoRA and Aletheia: the same recipe for both (paper §3.4).

AdamW, linear warmup then cosine decay, gradient accumulation, global-norm clipping, a fixed number
of optimizer steps. A non-finite loss ends the run with status ``failed`` and the step and reason,
rather than a crash (the paper's Pythia fp16 case).

The plumbing is accelerate's (``distributed.make_accelerator``): bf16 and fp16 run under its
autocast (the base weights are already in that dtype; PEFT keeps the adapters in fp32) and fp16
scales the loss so small gradients do not underflow; the micro-batches of each step are split across
processes and DDP or FSDP2 averages their gradients, so N processes take the same steps as one. In
one process the losses are those of the hand-written loop this replaced (``tests/test_engine.py``,
``bench/engine.py``).
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import distributed
from .architectures import get_blocks
from .checkpoint import load_checkpoint, save_checkpoint
from .config import SCHEDULERS, TrainConfig
from .data import train_batches
from .interrupts import RunInterrupted, stop_requested
from .lm_loss import causal_lm_loss


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


def _number(x) -> float:
    """A float from a tensor, a sharded (FSDP2 ``DTensor``) one included; NaN for none (DeepSpeed
    clips inside its engine and may not report a norm)."""
    if x is None:
        return math.nan
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


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
    accelerator = distributed.make_accelerator(dtype, device, cfg.grad_accum, distributed.fsdp_requested(cfg.fsdp),
                                               blocks=sorted({type(b).__name__ for b in get_blocks(model)}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(SCHEDULERS[cfg.scheduler], optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    # the scheduler stays ours: accelerate's wrapper would step it N times per step under data parallel
    forward, optimizer = accelerator.prepare(model, optimizer)  # DDP/FSDP2 wrapper, scaler-aware optimizer
    if cfg.compile:  # after sharding, as FSDP2 wants; the module's own weights and state-dict keys stay
        import torch._inductor.config as inductor

        inductor.fallback_random = True  # adapter dropout draws eager's masks: the same losses, resumable
        for block in get_blocks(model):
            block.compile(dynamic=True)
    step_times, losses, tokens, failure, records, before = [], [], 0, None, [], 0.0
    done = 0
    if resume_from is not None:  # weights, optimizer, schedule, RNG and metrics as they were
        history = load_checkpoint(resume_from, accelerator, model, optimizer, scheduler)
        done, records = history["step"], history["metrics"]
        step_times, losses = [r["step_seconds"] for r in records], [r["loss"] for r in records]
        tokens, before = history["tokens"], history["train_seconds"]
    batches = train_batches(items, cfg.batch_size, seed, pad_id, skip=done * cfg.grad_accum)
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
        # every process draws every batch, so the streams stay aligned; each takes its slice of them
        micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
        with accelerator.split_between_processes(micro_batches) as mine:
            for batch in mine:
                batch = {k: v.to(device) for k, v in batch.items()}
                # accumulate: no gradient sync but on the step's last micro-batch; backward divides
                # the loss by the micro-batches of this process, the average over processes does the rest
                with accelerator.accumulate(forward), accelerator.autocast():
                    loss = causal_lm_loss(model, batch, forward)
                    if not torch.isfinite(loss):
                        accelerator.set_trigger()
                    if accelerator.check_trigger():  # a sync point: every process stops together
                        failure = {"step": step, "reason": f"non-finite loss ({loss.item()}) at step {step}"}
                        break
                    accelerator.backward(loss)
                step_loss += (loss / cfg.grad_accum).item()
                tokens += int(batch["attention_mask"].sum())
        if failure:
            optimizer.optimizer.zero_grad(set_to_none=True)
            break
        if accelerator.num_processes > 1:
            step_loss = float(accelerator.reduce(torch.tensor([step_loss], device=device), "sum"))
        # unscales fp16 gradients first; given all of the model's parameters (the frozen ones hold no
        # gradient, so the norm is the adapter's), accelerate takes its FSDP route with one unscale
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()  # skipped by the fp16 scaler when the gradients overflowed
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest step times: wait for the GPU
        dt = time.perf_counter() - t0
        step_times.append(dt)
        losses.append(step_loss)
        record = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                  "grad_norm": _number(grad_norm), "step_seconds": dt}
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
            save_checkpoint(checkpoint_dir, step, accelerator, model, optimizer, scheduler, history, cfg.keep_last)
        if stop:
            bar.close()
            saved = "checkpoint saved" if checkpoint_dir is not None else "no checkpoint"
            raise RunInterrupted(f"{stop} at step {step}/{cfg.steps}, {saved}")
    train_seconds = before + time.perf_counter() - start - eval_seconds
    bar.close()
    if metrics:
        metrics.close()
    accelerator.unwrap_model(forward, keep_fp32_wrapper=False)  # the model's own forward again, for eval
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
        loss_scale=float(accelerator.scaler.get_scale()) if accelerator.scaler is not None else None,
        processes=accelerator.num_processes,
        resumed_from_step=done if resume_from is not None else None,
    )

