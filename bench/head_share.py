"""How much of a standard-LoRA training step the output head and the loss take, per embedded model.

    python bench/head_share.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json --threads 1

Gemma 3 270M has a 262,144-token head (tied to its 168M-parameter embedding) on 640-wide blocks;
SmolLM2-135M a 49,152-token one on 576-wide blocks. For each model, on the same real batches: the
matmul FLOPs of one step (``torch.utils.flop_counter``, per module) and the head's share of them, and
the median time of a whole step next to the time of the head and loss alone (forward and backward
from the final hidden states, which the whole step also does), interleaved. The head runs on the
scored positions only (``aletheia.lm_loss``), as in training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
import torch.nn.functional as F
from core import timed_step  # bench/core.py: the same timed step as the core benchmark
from torch.utils.flop_counter import FlopCounterMode

from aletheia.architectures import get_architecture, num_layers
from aletheia.data import tokenize_examples, train_batches
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss, scored_positions
from aletheia.lora import apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.utils import set_seed


def head_and_loss_seconds(model, batch) -> float:
    """Forward and backward of the head and the loss from the final hidden states, timed alone."""
    base = model.get_base_model()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        hidden = base.model(**inputs).last_hidden_state
    mask = scored_positions(batch["labels"])
    targets = batch["labels"][:, 1:][mask[:, :-1]]
    hidden = hidden[mask].detach().requires_grad_(True)
    t = time.perf_counter()
    logits = base.get_output_embeddings()(hidden)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma's soft cap, as its forward applies it
        logits = torch.tanh(logits / cap) * cap
    F.cross_entropy(logits.float(), targets).backward()
    return time.perf_counter() - t


def measure(name: str, args) -> dict:
    set_seed(args.seed)
    model, tok = load_model_and_tokenizer(name)
    items = tokenize_examples(tok, load_examples(args.data), args.max_length)
    batches = list(itertools.islice(train_batches(items, args.batch_size, args.seed, tok.pad_token_id),
                                    args.steps + 1))
    model = apply_lora(model, standard_lora_config(get_architecture(model), num_layers(model)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: every step sees the same weights
    with FlopCounterMode(display=False) as counter:
        causal_lm_loss(model, batches[0]).backward()
    opt.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    head = sum(sum(ops.values()) for mod, ops in counts.items() if mod.endswith("lm_head"))
    full, alone = [], []
    for i, batch in enumerate(batches):
        sides = [lambda: full.append(timed_step(model, opt, iter([batch]), 1, causal_lm_loss)),
                 lambda: alone.append(head_and_loss_seconds(model, batch))]
        for side in sides if i % 2 else sides[::-1]:
            side()
        opt.zero_grad(set_to_none=True)
    full, alone = full[1:], alone[1:]  # batch 0 warms up both
    step_s, head_s = statistics.median(full), statistics.median(alone)
    cfg = model.get_base_model().config
    return {"model": name, "vocab": cfg.vocab_size, "hidden": cfg.hidden_size, "layers": num_layers(model),
            "step_s": step_s, "head_loss_s": head_s, "time_share": head_s / step_s,
            "flops_step": total, "flops_head": head, "flop_share": head / total,
            "scored_positions": int(scored_positions(batches[0]["labels"]).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        r = measure(name, args)
        results.append(r)
        print(f"{name:14s} vocab {r['vocab']:>7,}  step {r['step_s']:.3f}s  head+loss {r['head_loss_s']:.3f}s "
              f"= {r['time_share']:.0%} of the step;  head matmul FLOPs {r['flop_share']:.0%} of "
              f"{r['flops_step'] / 1e9:.0f} G  ({r['scored_positions']} scored positions, batch "
              f"{args.batch_size} x <= {args.max_length} tokens, {torch.get_num_threads()} thread(s))")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"results": results, "args": vars(args)}, fh, indent=2)


if __name__ == "__main__":
    main()
