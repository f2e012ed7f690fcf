"""``train.compile`` measured: eager vs compiled decoder blocks on the same micro-batches, interleaved.

    python bench/compile_step.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json \
        --max-length 512 --steps 15 --output bench/results/compile_step.json

Two copies of the embedded model with the same standard LoRA adapter (every block, seed 0), one
eager and one with each decoder block through ``torch.compile(dynamic=True)`` as ``train.compile``
does (with ``fallback_random``, so adapter dropout draws eager's masks). Each step is a forward and
backward pass of one padding-free micro-batch (batch 4); the two copies take turns, the order
swapped every step, so load from other processes hits both alike. The first compiled step (the
compile) is timed on its own. Prints the median step of each, their ratio, and the largest loss
difference (the two should agree to float rounding).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch._inductor.config as inductor

from aletheia.architectures import get_architecture, get_blocks, num_layers
from aletheia.config import AdapterConfig
from aletheia.data import collate, tokenize_examples
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.utils import set_seed


def build(model_name, dropout: float, compiled: bool):
    model, tokenizer = load_model_and_tokenizer(model_name, dtype=torch.float32)
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
    loss = causal_lm_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=15, help="timed micro-batch steps per side")
    ap.add_argument("--dropout", type=float, default=0.05, help="adapter dropout (the recipe's 0.05)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inductor.fallback_random = True
    eager, tokenizer = build(args.model, args.dropout, compiled=False)
    compiled, _ = build(args.model, args.dropout, compiled=True)
    items = tokenize_examples(tokenizer, load_examples(args.data), args.max_length)
    batches = [collate(items[i:i + 4], tokenizer.pad_token_id) for i in range(0, 4 * (args.steps + 1), 4)]
    set_seed(1)
    compile_seconds, _ = step(compiled, batches[0])
    times, losses = {"eager": [], "compiled": []}, {"eager": [], "compiled": []}
    for i, batch in enumerate(batches[1:]):
        order = ("eager", "compiled") if i % 2 else ("compiled", "eager")
        for name in order:  # the same RNG state for both sides of a step: the same dropout masks
            set_seed(100 + i)
            seconds, loss = step(eager if name == "eager" else compiled, batch)
            times[name].append(seconds)
            losses[name].append(loss)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    diff = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"], strict=True))
    print(f"max length {args.max_length}, dropout {args.dropout}: compile {compile_seconds:.1f}s; median step "
          f"eager {e:.3f}s, compiled {c:.3f}s -> {e / c:.3f}x; largest loss difference {diff:.2e}")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"command": "python bench/compile_step.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "output"),
                "machine": f"{platform.machine()}, threads {args.threads}", "torch": torch.__version__,
                "compile_seconds": compile_seconds, "step_seconds": times, "losses": losses,
                "median_ratio": e / c, "max_loss_difference": diff}, fh, indent=1)


if __name__ == "__main__":
    main()
