"""Core benchmark (issue 2): probe modes and step time of standard LoRA vs Aletheia, one process.

    python bench/core.py                      # embedded SmolLM2-135M-Instruct, bootstrap data
    python bench/core.py --data FILE.json     # your Alpaca/chat/text data

1. Probe: ``single-pass`` vs ``chunked`` on the same 5 batches (time ratio, same selected layers?),
   and the arithmetic each mode does (matmul FLOPs counted by ``torch.utils.flop_counter`` on one
   batch). The FLOP ratio bounds the time ratio: chunked repeats the forward pass and the head once
   per chunk, but each chunk's backward stops at its lowest block, so with L=30 blocks and chunks of
   8 it does about 2.7x the work of single-pass, not 4x.
2. Training step: standard LoRA (every layer) vs Aletheia (probe-selected layers), same batches,
   same optimizer; timed steps interleaved (A, B, A, B, ...) so machine noise hits both alike.
Prints medians and ratios; ``--output`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from aletheia.architectures import get_architecture, num_layers
from aletheia.config import AdapterConfig
from aletheia.data import probe_batches, tokenize_examples, train_batches
from aletheia.examples import load_examples
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import aletheia_lora_config, apply_lora, standard_lora_config
from aletheia.models import load_model_and_tokenizer
from aletheia.probe import run_probe
from aletheia.selection import top_fraction
from aletheia.utils import set_seed


def timed_step(model, opt, batches, accum, loss_fn=causal_lm_loss):
    """One optimizer step of ``accum`` micro-batches: forward, backward, clip, AdamW, zero grads."""
    t0 = time.perf_counter()
    for _ in range(accum):
        loss = loss_fn(model, next(batches)) / accum
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per method (after 2 warm-up steps)")
    ap.add_argument("--probe-repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    set_seed(args.seed)
    model, tok = load_model_and_tokenizer(args.model)
    items = tokenize_examples(tok, load_examples(args.data), args.max_length)
    pad = tok.pad_token_id
    batches = probe_batches(items, args.batches, args.batch_size, args.seed, pad)
    n = num_layers(model)

    # 1. probe modes, alternated
    times = {"single-pass": [], "chunked": []}
    results = {}
    for _ in range(args.probe_repeats):
        for mode in times:
            r = run_probe(model, batches, mode=mode, progress=False)
            times[mode].append(r.seconds)
            results[mode] = r
    single, chunked = (statistics.median(times[m]) for m in ("single-pass", "chunked"))
    flops = {}
    for mode in times:
        with FlopCounterMode(display=False) as counter:
            run_probe(model, batches[:1], mode=mode, progress=False)
        flops[mode] = counter.get_total_flops()
    flop_ratio = flops["chunked"] / flops["single-pass"]
    sel_single = top_fraction(results["single-pass"].scores, 0.5)
    sel_chunked = top_fraction(results["chunked"].scores, 0.5)

    # 2. step time, interleaved
    arch = get_architecture(model)
    set_seed(args.seed)
    std = apply_lora(copy.deepcopy(model), standard_lora_config(arch, n))
    set_seed(args.seed)
    ale = apply_lora(copy.deepcopy(model), aletheia_lora_config(arch, sel_single, AdapterConfig()))
    runs = {}
    for name, m in (("standard", std), ("aletheia", ale)):
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
        runs[name] = (m, opt, train_batches(items, args.batch_size, args.seed, pad))
        for _ in range(2):
            timed_step(m, opt, runs[name][2], 2)  # warm-up
    steps = {"standard": [], "aletheia": []}
    for _ in range(args.steps):
        for name, (m, opt, it) in runs.items():
            steps[name].append(timed_step(m, opt, it, 2))
    s_std, s_ale = statistics.median(steps["standard"]), statistics.median(steps["aletheia"])

    out = {
        "model": model.aletheia_source, "layers": n, "selected_layers": sel_single,
        "probe_batches": args.batches, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "probe_single_pass_s": single, "probe_chunked_s": chunked, "probe_speedup": chunked / single,
        "probe_passes": {"single-pass": results["single-pass"].passes, "chunked": results["chunked"].passes},
        "probe_flops_one_batch": flops, "probe_flop_ratio": flop_ratio,
        "probe_speedup_share_of_flop_ratio": chunked / single / flop_ratio,
        "same_selection": sel_single == sel_chunked,
        "max_score_rel_diff": max(abs(a - b) / b for a, b in zip(results["single-pass"].scores,
                                                                 results["chunked"].scores)),
        "step_standard_s": s_std, "step_aletheia_s": s_ale, "step_speedup": s_std / s_ale,
    }
    print(f"model {out['model']} ({n} layers), {torch.get_num_threads()} threads")
    print(f"probe  single-pass {single:6.2f}s  chunked {chunked:6.2f}s  ->  {chunked / single:.2f}x faster; "
          f"same selected layers: {out['same_selection']} (max score diff {out['max_score_rel_diff']:.1e})")
    print(f"probe  arithmetic: chunked does {flop_ratio:.2f}x the matmul FLOPs of single-pass "
          f"({flops['chunked'] / 1e9:.1f} vs {flops['single-pass'] / 1e9:.1f} GFLOP per batch); the time ratio is "
          f"{out['probe_speedup_share_of_flop_ratio']:.0%} of that")
    print(f"step   standard    {s_std:6.3f}s  aletheia {s_ale:6.3f}s  ->  {s_std / s_ale:.2f}x "
          f"(median of {args.steps} interleaved steps, {len(sel_single)}/{n} layers {sel_single})")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
