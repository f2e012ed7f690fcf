"""Output head on scored positions only (``aletheia.lm_loss``) vs HF's loss over full logits.

    python bench/scored_head.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json --threads 1

One standard-LoRA model, the same real training batches, steps interleaved (HF, ours, HF, ours, ...):
forward, backward, clip, AdamW. Prints the median step of each, their ratio, the share of positions
the head still runs on, the largest loss difference between the two on the same batch, and the
matmul FLOPs of one step of each (``torch.utils.flop_counter``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
from core import timed_step  # bench/core.py: the same timed step as the core benchmark
from torch.utils.flop_counter import FlopCounterMode

from aletheia.architectures import get_architecture, num_layers
from aletheia.data import tokenize_examples, train_batches
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.utils import set_seed


def hf_loss(model, batch):
    return model(**batch).loss


def ours(model, batch):
    return causal_lm_loss(model, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    set_seed(args.seed)
    model, tok = load_model_and_tokenizer(args.model)
    items = tokenize_examples(tok, load_examples(args.data), args.max_length)
    batches = list(itertools.islice(train_batches(items, args.batch_size, args.seed, tok.pad_token_id),
                                    args.steps + 1))
    scored = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    positions = sum(b["labels"].numel() for b in batches)
    model = apply_lora(model, standard_lora_config(get_architecture(model), num_layers(model)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: every step sees the same weights

    model.eval()  # no dropout while the two losses are compared on the same batch
    with torch.no_grad():
        diff = max(abs(hf_loss(model, b).item() - ours(model, b).item()) for b in batches)
    flops = {}
    for name, fn in (("hf", hf_loss), ("ours", ours)):
        with FlopCounterMode(display=False) as counter:
            fn(model, batches[0]).backward()
        opt.zero_grad(set_to_none=True)
        flops[name] = counter.get_total_flops()
    model.train()

    times = {"hf": [], "ours": []}
    for i, batch in enumerate(batches):
        order = [("hf", hf_loss), ("ours", ours)]
        for name, fn in order if i % 2 else order[::-1]:
            t = timed_step(model, opt, iter([batch]), 1, fn)
            if i:  # batch 0 warms up both
                times[name].append(t)
    hf_s, ours_s = statistics.median(times["hf"]), statistics.median(times["ours"])
    out = {"hf_step_s": hf_s, "ours_step_s": ours_s, "speedup": hf_s / ours_s,
           "scored_share": scored / positions, "max_loss_diff": diff,
           "flops_hf": flops["hf"], "flops_ours": flops["ours"], "flop_ratio": flops["hf"] / flops["ours"],
           "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
           "threads": torch.get_num_threads(), "data": args.data}
    print(f"head on {scored}/{positions} positions ({scored / positions:.0%}); "
          f"largest loss difference {diff:.1e}")
    print(f"step  HF loss {hf_s:.3f}s  ours {ours_s:.3f}s  ->  {hf_s / ours_s:.2f}x "
          f"(median of {args.steps} interleaved standard-LoRA steps); matmul FLOPs {flops['hf'] / 1e9:.1f} vs "
          f"{flops['ours'] / 1e9:.1f} G = {out['flop_ratio']:.2f}x")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
