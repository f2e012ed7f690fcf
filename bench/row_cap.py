"""Padded micro-batches against packed ones: one row, or rows under a token cap (``packing.ROW_TOKENS``).

    python bench/row_cap.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json --max-length 128 \
        --dtype bfloat16 --output bench/results/row-cap-bf16-128.json

One model (the embedded SmolLM2-135M, standard LoRA on every block, adapter dropout 0.05), one
forward and backward pass of a micro-batch of 4 per setting, the settings taken in turns and the
order rotated every step, so load hits them alike. One packed row gives attention more query-key
pairs than rows of ``max length`` (about 2.4x at 128 on Alpaca data); a cap of one or two max
lengths per row bounds that, at the price of some row padding. Prints each setting's median step
and padded / that.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from step_options import build, micro_batches, step, step_arguments, write_result

from aletheia import packing
from aletheia.packing import set_padding_free
from aletheia.utils import set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(ap, max_length=128, steps=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = build(args.model, 0.05, dtype=getattr(torch, args.dtype))
    n = args.max_length
    settings = {"padded": (False, None), "one row": (True, None), f"cap {n}": (True, n), f"cap {2 * n}": (True, 2 * n)}
    batches = micro_batches(tokenizer, args)

    def use(name: str) -> None:
        free, cap = settings[name]
        set_padding_free(model, free)
        packing.ROW_TOKENS = cap

    names = list(settings)
    for name in names:  # untimed: the first step's allocations
        use(name)
        set_seed(1)
        step(model, batches[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, batch in enumerate(batches[1:]):
        for name in names[i % len(names):] + names[:i % len(names)]:
            use(name)
            set_seed(100 + i)
            times[name].append(step(model, batch)[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"max length {n}, {args.dtype}: {name:<8} median step {medians[name]:.3f}s  "
              f"padded / this {medians['padded'] / medians[name]:.3f}x")
    write_result("row_cap.py", args, median_step_seconds=medians, step_seconds=times)


if __name__ == "__main__":
    main()
