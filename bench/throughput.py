"""Training throughput side by side (issue 14): HF Trainer + PEFT against Aletheia's rows and the floor.

    python bench/throughput.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json \
        --output bench/results/throughput.json                      # max length 512 and 128, fp32
    python bench/throughput.py ... --dtype bfloat16 --steps 20 --seeds 42 43 44   # bigger

Rows, each in its own worker process (its own peak memory), on the same examples in the same
micro-batches (batch 4 x grad_accum 2, the recipe's defaults):
- ``hf-trainer``: HF ``Trainer`` + PEFT standard LoRA (r=16 on every block) with
  ``DataCollatorForSeq2Seq`` (padding to the longest), what users run today; sequential sampler over
  our stream's order, so it sees our micro-batches;
- ``std-padded`` / ``std-free``: our loop (``train_lora``), standard LoRA, padded / padding-free;
- ``aletheia``: the paper's rule (top 50% by the probe), padding-free;
- ``cost-aware``: ``configs/cost-aware-bf16.yaml``'s selector (time budget 0.6, MLP rank matched to
  standard LoRA's parameter count), padding-free;
- ``cost-compiled``: the same with ``train.compile`` (decoder blocks through ``torch.compile``; the
  compile falls in the untimed first step);
- ``floor``: the frozen base's forward pass alone (no gradient, head on scored positions) on the
  same micro-batches, padding-free: what no training step can beat.
Steps are taken in turns, one optimizer step per row per round, the order rotated every round, so
load from other processes hits every row alike; the first ``--warmup`` steps are not timed.
tokens/s counts real tokens. After the last step each training row reports its held-out loss (the
same split and function for every row) and a breakdown of one micro-batch step: the blocks' forward
(with the base alone under no_grad beside it: the difference is the adapters' forward work), head +
loss, backward (to the lowest adapted block), and clip + AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROWS = ("hf-trainer", "std-padded", "std-free", "aletheia", "cost-aware", "cost-compiled", "floor")
COST_ROWS = ("cost-aware", "cost-compiled")
TRAINING = ROWS[:-1]
TAG = "@@throughput "  # the worker's answers on stdout (libraries print there too)


# --- worker side ---------------------------------------------------------------------------------

def say(obj: dict) -> None:
    print(TAG + json.dumps(obj), flush=True)


def wait_for(command: str) -> None:
    line = sys.stdin.readline().strip()
    if line != command:
        raise SystemExit(f"worker: expected {command!r}, got {line!r}")


def cpu_name() -> str:
    """The CPU's model and the bf16 matmul units it has (bf16 speed depends on them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    units = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in info]
    return f"{name} ({', '.join(units) or 'no bf16 units'})"


def peak_rss() -> int:
    from aletheia.train import peak_memory

    return peak_memory(torch.device("cpu"))[0]


def run_config(args, row: str, seed: int):
    from aletheia.config import AdapterConfig, DataConfig, ProbeConfig, RunConfig, TrainConfig

    probe = ProbeConfig(selector="cost-aware", time_budget=0.6, calibration_rounds=args.calibration_rounds) \
        if row in COST_ROWS else ProbeConfig()
    return RunConfig(model=args.model, seed=seed, method="standard" if row.startswith(("std", "hf")) else "aletheia",
                     data=DataConfig(path=args.data, max_length=args.max_length,
                                     max_eval_examples=args.eval_examples),
                     probe=probe, adapter=AdapterConfig(match_parameters=row in COST_ROWS),
                     train=TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                       warmup_steps=max(1, args.steps // 10), dtype=args.dtype,
                                       compile=row == "cost-compiled"))


def breakdown(model, batch, loss_fn, reps: int = 2) -> dict:
    """Seconds of one micro-batch step by phase (median of ``reps`` after one untimed), read off hooks on
    the head."""
    from aletheia.utils import mixed_precision, weights_dtype

    head = model.get_output_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-12)
    precision = mixed_precision(weights_dtype(model), torch.device("cpu"))
    marks: list[float] = []
    handle = head.register_forward_pre_hook(lambda m, a: marks.append(time.perf_counter()))
    phases: dict[str, list[float]] = {k: [] for k in ("base_forward", "blocks_forward", "head_loss",
                                                      "backward", "optimizer")}
    try:
        for rep in range(reps + 1):  # the first is untimed: a compiled row compiles its no-grad graph there
            if rep == 1:
                phases = {k: [] for k in phases}
            marks.clear()
            with torch.no_grad(), model.disable_adapter(), precision:
                t0 = time.perf_counter()
                loss_fn(model, batch)
                phases["base_forward"].append(marks[-1] - t0)
            marks.clear()
            t0 = time.perf_counter()
            with precision:
                loss = loss_fn(model, batch)
            t1 = time.perf_counter()
            phases["blocks_forward"].append(marks[-1] - t0)
            phases["head_loss"].append(t1 - marks[-1])
            loss.backward()
            t2 = time.perf_counter()
            phases["backward"].append(t2 - t1)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            phases["optimizer"].append(time.perf_counter() - t2)
    finally:
        handle.remove()
    out = {k: statistics.median(v) for k, v in phases.items()}
    out["adapter_forward"] = max(0.0, out["blocks_forward"] - out["base_forward"])
    return out


class Gate:
    """A ``train_lora`` tracker that reports each step and waits for the parent before the next."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def log(self, values: dict, step: int | None = None) -> None:
        if "train/step_seconds" not in values:
            return
        dt = values["train/step_seconds"]
        say({"seconds": dt, "tokens": values["train/tokens_per_second"] * dt, "loss": values["train/loss"]})
        self.left -= 1
        if self.left:
            wait_for("step")

    def log_hparams(self, values: dict) -> None:
        pass

    def log_probe_scores(self, scores, selected) -> None:
        pass


def worker(args) -> None:
    from aletheia import packing
    from aletheia.architectures import get_architecture, num_layers
    from aletheia.cost import matched_adapter, module_shapes
    from aletheia.data import eval_batches, train_batches
    from aletheia.evaluation.loss import heldout_loss
    from aletheia.lm_loss import causal_lm_loss
    from aletheia.lora import aletheia_lora_config, apply_lora, standard_lora_config, trainable_parameters
    from aletheia.recipe import prepare, probe_and_select
    from aletheia.train import reset_peak_memory, train_lora
    from aletheia.utils import mixed_precision, set_seed

    torch.set_num_threads(args.threads)
    row, cfg = args.worker, run_config(args, args.worker, args.seed)
    set_seed(cfg.seed)
    t_setup = time.perf_counter()
    ws = prepare(cfg)
    model, pad = ws.model, ws.tokenizer.pad_token_id
    packing.set_padding_free(model, row not in ("hf-trainer", "std-padded"))
    arch, n = get_architecture(model), num_layers(model)
    info: dict = {"row": row, "padding_free": packing.padding_free(model)}
    if row in ("aletheia", *COST_ROWS):
        selection = probe_and_select(cfg, ws, progress=False)
        adapter = cfg.adapter
        if adapter.match_parameters:
            adapter = matched_adapter(module_shapes(model, arch), arch.attention, arch.mlp, selection.layers, adapter)
        lora = aletheia_lora_config(arch, selection.layers, adapter)
        info |= {"layers": selection.layers, "probe_seconds": selection.seconds, "mlp_rank": adapter.mlp_rank}
    else:
        lora = standard_lora_config(arch, n, cfg.adapter)
        info["layers"] = list(range(n))
    if row != "floor":
        set_seed(cfg.seed)
        model = apply_lora(model, lora)
        info["trainable"] = trainable_parameters(model)
    info["setup_seconds"] = time.perf_counter() - t_setup
    say(info)

    stream = train_batches(ws.train_items, cfg.train.batch_size, cfg.seed, pad)
    sample = next(train_batches(ws.train_items, cfg.train.batch_size, cfg.seed, pad))
    wait_for("step")
    set_seed(cfg.seed)
    if row == "floor":
        reset_peak_memory(torch.device("cpu"))
        model.eval()
        for step in range(cfg.train.steps):
            t0, tokens = time.perf_counter(), 0
            with torch.no_grad(), mixed_precision(ws.dtype, ws.device):
                for _micro in range(cfg.train.grad_accum):
                    batch = next(stream)
                    causal_lm_loss(model, batch)
                    tokens += int(batch["attention_mask"].sum())
            say({"seconds": time.perf_counter() - t0, "tokens": tokens, "loss": None})
            if step < cfg.train.steps - 1:
                wait_for("step")
        loss_fn = None
    elif row == "hf-trainer":
        hf_train(args, cfg, model, ws, stream)
        loss_fn = lambda m, b: m(**b).loss  # noqa: E731 - what the Trainer computes
    else:
        train_lora(model, ws.train_items, cfg.train, cfg.seed, pad, dtype=ws.dtype, progress=False,
                   tracker=Gate(cfg.train.steps))
        loss_fn = causal_lm_loss
    info = {"peak_rss": peak_rss()}
    wait_for("finish")
    if loss_fn is not None:
        info["eval_loss"] = heldout_loss(model, eval_batches(ws.eval_items, 8, pad))
        model.train()
        info["breakdown"] = breakdown(model, sample, loss_fn)
    say(info)


def hf_train(args, cfg, model, ws, stream) -> None:
    """HF Trainer over the examples of our stream's micro-batches, in order (sequential sampler)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from aletheia import packing
    from aletheia.train import reset_peak_memory

    t = cfg.train
    examples = [{k: v.tolist() for k, v in it.items()}
                for _ in range(t.steps * t.grad_accum) for it in packing.unpad(next(stream))]

    class Timed(TrainerCallback):
        def __init__(self):
            self.step, self.t0 = 0, 0.0

        def on_step_begin(self, a, state, control, **kw):
            if self.step:
                wait_for("step")
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            lo = self.step * t.grad_accum * t.batch_size
            tokens = sum(len(e["input_ids"]) for e in examples[lo:lo + t.grad_accum * t.batch_size])
            self.step += 1
            say({"seconds": time.perf_counter() - self.t0, "tokens": tokens, "loss": None})

    targs = TrainingArguments(
        output_dir=os.path.join(args.scratch, "hf"), max_steps=t.steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, warmup_steps=t.warmup_steps,
        lr_scheduler_type="cosine", weight_decay=t.weight_decay, adam_beta1=t.betas[0], adam_beta2=t.betas[1],
        adam_epsilon=t.eps, max_grad_norm=t.max_grad_norm, bf16=ws.dtype == torch.bfloat16, use_cpu=True,
        save_strategy="no", report_to=[], logging_steps=10_000, disable_tqdm=True, seed=cfg.seed,
        dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="sequential")
    collator = DataCollatorForSeq2Seq(ws.tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=targs, train_dataset=examples, data_collator=collator,
                      callbacks=[Timed()])
    reset_peak_memory(torch.device("cpu"))
    trainer.train()


# --- parent side ---------------------------------------------------------------------------------

class Worker:
    def __init__(self, args, row: str, seed: int, log) -> None:
        cmd = [sys.executable, __file__, "--worker", row, "--seed", str(seed)] + args.pass_on
        self.row, self.seed = row, seed
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        raise SystemExit(f"{self.row} (seed {self.seed}) stopped; see the worker log")


def run_length(args, max_length: int, log) -> dict:
    args.pass_on = strip(sys.argv[1:], "--max-length") + ["--max-length", str(max_length)]
    jobs = [(row, seed) for row in args.rows for seed in (args.seeds if row in TRAINING else args.seeds[:1])]
    workers = []
    for row, seed in jobs:  # one at a time: loading is not what is timed
        w = Worker(args, row, seed, log)
        w.info = w.answer()
        workers.append(w)
        print(f"  {row} seed {seed}: ready in {w.info['setup_seconds']:.0f}s", file=sys.stderr, flush=True)
    steps = {id(w): [] for w in workers}
    for r in range(args.steps):
        order = workers[r % len(workers):] + workers[: r % len(workers)]
        for w in order:
            w.send("step")
            steps[id(w)].append(w.answer())
        print(f"  round {r + 1}/{args.steps}", file=sys.stderr, flush=True)
    rows = []
    for w in workers:
        w.send("finish")
        w.info |= w.answer()
        w.proc.wait()
        timed = steps[id(w)][args.warmup:]
        w.info |= {"seed": w.seed, "step_seconds": [s["seconds"] for s in timed],
                   "tokens_per_second": sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed),
                   "median_step_seconds": statistics.median(s["seconds"] for s in timed)}
        rows.append(w.info)
    return {"max_length": max_length, "rows": rows}


def strip(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its values (up to the next flag)."""
    out, skipping = [], False
    for a in argv:
        if a.startswith("--"):
            skipping = a == flag
        if not skipping:
            out.append(a)
    return out


def table(result: dict) -> str:
    by_row: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by_row.setdefault(r["row"], []).append(r)

    def mean(row, key):
        vals = [r[key] for r in by_row[row] if r.get(key) is not None]
        return statistics.mean(vals) if vals else None

    def paired(row, key, to):
        """Mean over the row's runs of its value / ``to``'s in the same interleaved run (merged files:
        the same part), so a row run under fewer seeds is still compared with its own neighbours."""
        if to not in by_row:
            return None
        theirs = {r.get("part", 0): r[key] for r in by_row[to] if r.get(key) is not None}
        vals = [r[key] / theirs[r.get("part", 0)] for r in by_row[row]
                if r.get(key) is not None and theirs.get(r.get("part", 0))]
        return statistics.mean(vals) if vals else None
    lines = [f"max length {result['max_length']}",
             "row          layers  tokens/s  x HF   x floor  step s  peak MiB  held-out loss (vs HF)",
             "-----------  ------  --------  -----  -------  ------  --------  ---------------------"]
    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    for row in (r for r in ROWS if r in by_row):
        tps = mean(row, "tokens_per_second")
        loss, loss_vs_hf = mean(row, "eval_loss"), paired(row, "eval_loss", "hf-trainer")
        loss_text = "" if loss is None else f"{loss:.4f}"
        if loss is not None and loss_vs_hf is not None:
            loss_text += f" ({100 * (loss_vs_hf - 1):+.2f}%)"
        if len(by_row[row]) > 1 and loss is not None:
            loss_text += f" mean of {len(by_row[row])} seeds"
        x_hf, x_floor = (ratio(paired(row, "tokens_per_second", to)) for to in ("hf-trainer", "floor"))
        counts = sorted({len(r["layers"]) for r in by_row[row]})
        layers = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        lines.append(f"{row:<11}  {layers:>6}  {tps:>8.0f}  {x_hf:>5}  {x_floor:>7}  "
                     f"{mean(row, 'median_step_seconds'):>6.2f}  {mean(row, 'peak_rss') / 2**20:>8.0f}  {loss_text}")
    lines += ["", "one micro-batch step, seconds: base fwd | adapter fwd | head+loss | backward | optimizer"]
    for row in (r for r in TRAINING if r in by_row):
        b = by_row[row][0]["breakdown"]
        lines.append(f"{row:<11}  {b['base_forward']:.3f} | {b['adapter_forward']:.3f} | {b['head_loss']:.3f} | "
                     f"{b['backward']:.3f} | {b['optimizer']:.3f}")
    return "\n".join(lines)


def merge(paths: list[str], output: str | None) -> None:
    """The rows of several result files as one result per max length (seeds of a row averaged)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    lengths: dict[int, list[dict]] = {}
    for part, run in enumerate(runs):
        for result in run["lengths"]:
            lengths.setdefault(result["max_length"], []).extend(
                {**r, "part": f"{part}.{r.get('part', 0)}"} for r in result["rows"])  # merged files merge again
    merged = {"command": "python bench/throughput.py --merge " + " ".join(paths), "parts": [r["command"] for r in runs],
              "machine": runs[0]["machine"], "torch": runs[0]["torch"], "dtype": runs[0]["dtype"],
              "lengths": [{"max_length": n, "rows": rows} for n, rows in lengths.items()]}
    for result in merged["lengths"]:
        print(table(result) + "\n")
    if output:
        Path(output).write_text(json.dumps(merged, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=None, help="default: the generated bootstrap set")
    ap.add_argument("--max-length", type=int, nargs="+", default=[512, 128])
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per row (the first --warmup untimed)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                    help="rows to run (default: all); e.g. the best rows again under more --seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="seeds of the training rows")
    ap.add_argument("--eval-examples", type=int, default=32, help="held-out examples")
    ap.add_argument("--calibration-rounds", type=int, default=1,
                    help="cost-aware: timed rounds of the cost model (cached per model, hardware and shape)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print (and --output) one table of earlier results, e.g. one run per seed")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default="/tmp/aletheia-throughput", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.max_length = args.max_length[0]
        return worker(args)
    if args.merge:
        return merge(args.merge, args.output)
    if args.warmup >= args.steps:
        raise SystemExit("--steps must exceed --warmup")
    results = {"command": " ".join(["python", "bench/throughput.py", *sys.argv[1:]]),
               "machine": f"{cpu_name()}, {os.cpu_count()} cpus, threads {args.threads}",
               "torch": torch.__version__, "dtype": args.dtype, "lengths": []}
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    with open(Path(args.scratch) / "workers.log", "w") as log:
        for length in args.max_length:
            print(f"max length {length}", file=sys.stderr, flush=True)
            result = run_length(args, length, log)
            results["lengths"].append(result)
            print(table(result) + "\n", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
