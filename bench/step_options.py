"""Two settings of one training step side by side: what ``train.compile`` and adapter dropout cost.

    python bench/step_options.py --option compile --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json \
        --max-length 512 --steps 15 --output bench/results/step-compile-512.json
    python bench/step_options.py --option dropout ...   # dropout 0.05 (the recipe's) against 0

Two copies of the embedded model with the same standard LoRA adapter (every block, seed 0):
- ``compile``: eager against each decoder block through ``torch.compile(dynamic=True)``, as
  ``train.compile`` does (with ``fallback_random``, so adapter dropout draws eager's masks and the
  losses agree to float rounding); the first compiled step (the compile) is timed on its own;
- ``dropout``: adapter dropout 0.05 against 0 (PEFT's ``nn.Dropout`` draws one mask per adapted
  module per step: 210 on SmolLM2).
Each step is a forward and backward pass of one padding-free micro-batch (batch 4); the copies take
turns, the order swapped every step and the RNG reseeded alike, so load from other processes hits
both alike. Prints the median step of each side, their ratio and the largest loss difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch._inductor.config as inductor
from throughput import cpu_name  # bench/ is the script's folder

from aletheia.architectures import get_architecture, get_blocks, num_layers
from aletheia.config import AdapterConfig
from aletheia.data import collate, tokenize_examples
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.utils import mixed_precision, set_seed, weights_dtype


def build(model_name, dropout: float, compiled: bool = False, dtype: torch.dtype = torch.float32):
    model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype)
    set_seed(0)
    adapter = AdapterConfig(dropout=dropout)
    model = apply_lora(model, standard_lora_config(get_architecture(model), num_layers(model), adapter))
    model.train()
    if compiled:
        for block in get_blocks(model):
            block.compile(dynamic=True)
    return model, tokenizer


def step(model, batch) -> tuple[float, float]:
    t = time.perf_counter()
    with mixed_precision(weights_dtype(model), torch.device("cpu")):  # as training: bf16 autocast
        loss = causal_lm_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t, loss.item()


def step_arguments(ap: argparse.ArgumentParser, max_length: int, steps: int) -> None:
    """The options of a one-step benchmark (this one and ``row_cap.py``)."""
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--steps", type=int, default=steps, help="timed micro-batch steps per setting")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None)


def micro_batches(tokenizer, args) -> list[dict]:
    """``args.steps`` + 1 padded micro-batches of 4 (the first for an untimed step)."""
    items = tokenize_examples(tokenizer, load_examples(args.data), args.max_length)
    return [collate(items[i:i + 4], tokenizer.pad_token_id) for i in range(0, 4 * (args.steps + 1), 4)]


def write_result(script: str, args, **result) -> None:
    """``result`` as JSON at ``args.output`` (if given), with the command, machine and torch."""
    if args.output:
        command = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                           if v is not None and k != "output")
        with open(args.output, "w") as fh:
            json.dump({"command": f"python bench/{script} {command}", "machine": f"{cpu_name()}, threads "
                       f"{args.threads}", "torch": torch.__version__, **result}, fh, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--option", choices=("compile", "dropout"), default="compile")
    ap.add_argument("--dropout", type=float, default=0.05, help="adapter dropout (the recipe's 0.05)")
    step_arguments(ap, max_length=512, steps=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inductor.fallback_random = True
    names = ("eager", "compiled") if args.option == "compile" else (f"dropout {args.dropout}", "dropout 0")
    dtype = getattr(torch, args.dtype)
    first, tokenizer = build(args.model, args.dropout, dtype=dtype)
    second, _ = build(args.model, args.dropout if args.option == "compile" else 0.0, args.option == "compile", dtype)
    models = dict(zip(names, (first, second), strict=True))
    batches = micro_batches(tokenizer, args)
    first_step = {}
    for name, model in models.items():  # untimed: the compile, or the first step's allocations
        set_seed(1)
        first_step[name] = step(model, batches[0])[0]
    times, losses = {n: [] for n in names}, {n: [] for n in names}
    for i, batch in enumerate(batches[1:]):
        for name in (names if i % 2 else names[::-1]):  # the same RNG state for both: the same masks
            set_seed(100 + i)
            seconds, loss = step(models[name], batch)
            times[name].append(seconds)
            losses[name].append(loss)
    a, b = (statistics.median(times[n]) for n in names)
    diff = max(abs(x - y) for x, y in zip(*losses.values(), strict=True))
    print(f"max length {args.max_length}, {args.dtype}, {args.option}: first step {first_step[names[0]]:.1f}s / "
          f"{first_step[names[1]]:.1f}s; median step {names[0]} {a:.3f}s, {names[1]} {b:.3f}s -> {a / b:.3f}x; "
          f"largest loss difference {diff:.2e}")
    write_result("step_options.py", args, first_step_seconds=first_step, step_seconds=times, losses=losses,
                 median_ratio=a / b, max_loss_difference=diff)


if __name__ == "__main__":
    main()
