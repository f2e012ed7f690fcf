"""Whole training runs, one at a time: standard LoRA, a chosen layer set, standard LoRA again (A-B-A).

    python bench/alone_runs.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json \\
        --layers 17-29 --ranks 16/49 --threads 1

The selector bench times steps interleaved on one model and trains its configurations two at a
time; this is the plainest check of "speed at equal steps": each run alone in a fresh process, with
the product loop (``selector_bench.worker``: ``train_lora``, then the held-out loss). Standard LoRA
runs before and after, so a drift of the machine shows as a difference between the two.
Prints each run's median step, training seconds and held-out loss, and the ratios against the
mean of the two standard runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def layer_list(text: str) -> list[int]:
    """'17-29' or '3,5,7' (or a mix: '0,17-29')."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return sorted(set(out))


def run_alone(spec: dict) -> dict:
    """One training run in its own process (nothing else of this script runs meanwhile)."""
    code = ("import json, sys; sys.path.insert(0, %r); import selector_bench as sb; "
            "r = sb.worker(json.loads(sys.argv[1])); "
            "print(json.dumps({k: r[k] for k in ('median_step_seconds', 'train_seconds', 'eval_loss', "
            "'peak_rss_bytes', 'trainable_params')}))") % str(HERE)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Alpaca/chat JSON(L); absent: the bootstrap set")
    ap.add_argument("--layers", required=True, type=layer_list, help="the selective run's layers, e.g. 17-29")
    ap.add_argument("--ranks", default=None, help="its attention/MLP ranks, e.g. 16/49 (default 16/32)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="the runs' precision, as aletheia --dtype (auto: fp32 on a CPU)")
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    a = ap.parse_args()

    settings = {"data": a.data, "steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length,
                "lr": a.lr, "fraction": 0.5, "eval_examples": 64, "seed": a.seed, "threads": a.threads,
                "cpu": True, "dtype": a.dtype}
    base = {"kind": "ours", "steps": a.steps, "settings": settings}
    ranks = [int(x) for x in a.ranks.split("/")] if a.ranks else None
    runs = {}
    for name, layers in (("standard (before)", None), ("selective", a.layers), ("standard (after)", None)):
        spec = {**base, "name": name, "layers": layers, **({"ranks": ranks} if layers and ranks else {})}
        runs[name] = run_alone(spec)
        r = runs[name]
        print(f"{name:18s} median step {r['median_step_seconds']:.3f}s  train {r['train_seconds']:.1f}s  "
              f"held-out loss {r['eval_loss']:.4f}  trainable {r['trainable_params']:,}", flush=True)
    std = [runs["standard (before)"], runs["standard (after)"]]
    sel = runs["selective"]
    step_ratio = statistics.mean(r["median_step_seconds"] for r in std) / sel["median_step_seconds"]
    time_ratio = statistics.mean(r["train_seconds"] for r in std) / sel["train_seconds"]
    drift = std[1]["median_step_seconds"] / std[0]["median_step_seconds"] - 1
    loss = sel["eval_loss"] / std[0]["eval_loss"] - 1
    print(f"speed vs standard: {step_ratio:.2f}x by median step, {time_ratio:.2f}x by training time "
          f"(standard drifted {drift:+.1%} between its two runs); held-out loss {loss:+.2%} vs standard")
    if a.output:
        Path(a.output).write_text(json.dumps({"settings": settings, "layers": a.layers, "ranks": ranks,
                                              "runs": runs, "step_ratio": step_ratio, "time_ratio": time_ratio,
                                              "standard_drift": drift, "loss_vs_standard": loss}, indent=1))


if __name__ == "__main__":
    main()
