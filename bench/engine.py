"""The training engine on accelerate vs the hand-written loop it replaced: same losses, same speed.

    python bench/engine.py --steps 6 --repeats 3 --threads 1 --output bench/results/engine.json

``old_train_lora`` below is a frozen copy of the per-step plumbing of ``train_lora`` before accelerate
took it over (commit 09c09cc): torch autocast, a hand-made GradScaler, micro-batches taken by rank,
plain clipping. Checkpoints, trackers and eval are left out (they run between steps, not in them) and
so is its DDP wrapper (one process here). It is kept only in this bench and in
``tests/test_engine.py``, which checks that both give the same losses.

Both train a fresh standard-LoRA adapter on the same model copy, seed and data, one process; the runs
alternate (old, new, old, new, ...) so a change in the machine's speed hits both alike. Prints whether
every per-step loss is equal and the ratio of median step times new/old (the target is <= 1.02).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import get_cosine_schedule_with_warmup

from aletheia.architectures import get_architecture, num_layers
from aletheia.config import TrainConfig
from aletheia.data import tokenize_examples, train_batches
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.train import train_lora
from aletheia.utils import mixed_precision, set_seed


def old_train_lora(model, items, cfg: TrainConfig, seed: int, pad_id: int,
                   dtype: torch.dtype = torch.float32) -> tuple[list[float], list[float], list[float]]:
    """The old loop's steps: per-step losses, grad norms and step seconds."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    autocast = mixed_precision(dtype, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type in ("cuda", "cpu"))
    batches = train_batches(items, cfg.batch_size, seed, pad_id, skip=0)
    mine, n_proc = set(range(cfg.grad_accum)), 1  # one process takes every micro-batch
    losses, norms, times = [], [], []
    model.train()
    for step in range(1, cfg.steps + 1):
        t0 = time.perf_counter()
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            if micro not in mine:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = causal_lm_loss(model, batch, model) / cfg.grad_accum
                bad = not torch.isfinite(loss)  # any_process() in one process
                if not bad:
                    scaler.scale(loss * n_proc).backward()
            if bad:
                raise RuntimeError(f"non-finite loss at step {step}")
            step_loss += loss.item()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(step_loss)
        norms.append(float(grad_norm))
    return losses, norms, times


def new_train_lora(model, items, cfg: TrainConfig, seed: int, pad_id: int,
                   dtype: torch.dtype = torch.float32) -> tuple[list[float], list[float], list[float]]:
    """``aletheia.train_lora`` (the accelerate engine), read back the same way."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        result = train_lora(model, items, cfg, seed, pad_id, metrics_path=metrics, dtype=dtype, progress=False)
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return result.losses, [r["grad_norm"] for r in records], [r["step_seconds"] for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first one is not timed)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine, alternated")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    base, tok = load_model_and_tokenizer(args.model, dtype=dtype)
    items = tokenize_examples(tok, load_examples(None, 200), args.max_length)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_steps=2)
    lora = standard_lora_config(get_architecture(base), num_layers(base))
    runs = {"old": [], "new": []}
    for rep in range(args.repeats):
        for name, loop in (("old", old_train_lora), ("new", new_train_lora)):
            set_seed(args.seed)
            model = apply_lora(copy.deepcopy(base), lora)
            set_seed(args.seed)
            losses, norms, times = loop(model, items, cfg, args.seed, tok.pad_token_id, dtype)
            runs[name].append({"losses": losses, "grad_norms": norms, "step_seconds": times})
            print(f"rep {rep + 1} {name}: median step {statistics.median(times[1:]):.3f}s, "
                  f"losses {' '.join(f'{x:.6f}' for x in losses)}", flush=True)
            del model

    same_losses = all(o["losses"] == n["losses"] for o, n in zip(runs["old"], runs["new"], strict=True))
    same_norms = all(o["grad_norms"] == n["grad_norms"] for o, n in zip(runs["old"], runs["new"], strict=True))
    diff = max(abs(a - b) for o, n in zip(runs["old"], runs["new"], strict=True)
               for a, b in zip(o["losses"], n["losses"], strict=True))
    median = {k: statistics.median(t for r in v for t in r["step_seconds"][1:]) for k, v in runs.items()}
    ratio = median["new"] / median["old"]
    print(f"losses  equal on every step of every run: {same_losses} (largest difference {diff:.1e}); "
          f"grad norms equal: {same_norms}")
    print(f"step    old loop {median['old']:.3f}s  accelerate engine {median['new']:.3f}s  ->  ratio new/old "
          f"{ratio:.3f} (median of {args.repeats}x{args.steps - 1} interleaved steps each; target <= 1.02)")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"args": vars(args), "runs": runs, "median_step_seconds": median, "ratio": ratio,
                       "same_losses": same_losses, "same_grad_norms": same_norms}, fh, indent=1)


if __name__ == "__main__":
    main()
