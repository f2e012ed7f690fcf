"""Selector benchmark: every registered selector against standard LoRA at equal steps, plus our
standard-LoRA loop against HF ``Trainer`` + PEFT on the same settings.

    python bench/selector_bench.py --data ../shared/data/alpaca_en_demo/alpaca_en_demo.json \\
        --steps 40 --batch-size 4 --max-length 128 --threads 1 --output bench/results/selectors

What is measured, and how (the machine may be shared, so every timing is paired or interleaved):

1. Selection. Each selector runs through ``select_layers`` on the embedded model; its seconds are
   the probe/scoring time. The paper's gradient probe also scores every selector's set: "gradient
   signal kept" is the share of the probe's total score held by the chosen layers.
2. Step time. Standard LoRA and every distinct selected layer set live on one model as named PEFT
   adapters and take turns, one training step each, on the same real batch per round (order rotated
   each round; ``cost.time_adapter_steps``). The median per configuration gives the step-time ratio
   (standard / selector, >1 is faster). The calibrated cost model's prediction for the same batches
   is shown beside it.
3. Training. Each configuration trains with the product loop (``train_lora``) for ``--steps`` steps
   in its own subprocess, then the held-out loss is measured. Peak memory is that subprocess's peak
   resident set (``ru_maxrss``), so it is per run; on a GPU it would be ``max_memory_allocated``.
4. Loop overhead. Our loop and HF ``Trainer`` (same model, adapters, batches in the same order,
   AdamW, warmup + cosine, clipping) run at the same time in two subprocesses, one thread each, so
   load from elsewhere hits both alike; ratio = our median step / Trainer's median step.

Writes ``selectors.md``, ``selectors.csv`` and ``selectors.json`` into ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SELECTORS = ["gradient-norm", "gradient-norm-per-param", "cost-aware", "random", "last-n", "first-n",
             "spectrum"]


def log(msg: str) -> None:
    print(f"[bench] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def source_hash() -> str:
    """Fingerprint of the package and this script: a stored run is reused only if the code is the same."""
    import hashlib

    import aletheia

    h = hashlib.sha1()
    for path in sorted(Path(aletheia.__file__).parent.rglob("*.py")) + [Path(__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def run_config(s: dict):
    from aletheia.config import RunConfig

    cfg = RunConfig()
    cfg.data.path = s["data"]
    cfg.data.max_length = s["max_length"]
    cfg.data.max_eval_examples = s["eval_examples"]
    cfg.seed = s["seed"]
    cfg.train.steps = s["steps"]
    cfg.train.batch_size = s["batch_size"]
    cfg.train.grad_accum = 1  # HF Trainer normalises accumulated losses differently; one micro-batch per step
    cfg.train.warmup_steps = max(1, s["steps"] // 10)
    cfg.train.lr = s["lr"]
    cfg.train.dtype = s.get("dtype", "auto")
    cfg.probe.batch_size = s["batch_size"]
    cfg.probe.fraction = s["fraction"]
    cfg.eval_accuracy_examples = 0
    return cfg.validate()


def step_tokens(items, batch_size: int, seed: int, pad_id: int, steps: int) -> list[int]:
    """Padded tokens of each training step's batch (the stream ``train_lora`` draws)."""
    from aletheia.data import train_batches

    return [int(b["input_ids"].numel())
            for b in itertools.islice(train_batches(items, batch_size, seed, pad_id), steps)]


# --- worker: one training run in its own process ------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def release_freed_memory() -> None:
    """glibc: hand freed heap back to the kernel (loading keeps some), so the resident set is what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Linux: reset this process's peak resident set (VmHWM), so the next reading covers training only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM (peak resident set since the last reset), else ru_maxrss (peak since process start)."""
    kb = _status_kb("VmHWM")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker(spec: dict) -> dict:
    """Train one configuration (ours or HF Trainer) and measure it; runs in a fresh subprocess."""
    import torch

    from aletheia.architectures import get_architecture, num_layers
    from aletheia.cost import backward_floor
    from aletheia.data import eval_batches, train_batches
    from aletheia.evaluation.loss import heldout_loss
    from aletheia.lora import aletheia_lora_config, apply_lora, standard_lora_config
    from aletheia.recipe import prepare
    from aletheia.train import train_lora
    from aletheia.utils import set_seed

    s = spec["settings"]
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    cfg = run_config(s)
    if spec.get("ranks"):  # a row with its own adapter ranks (``--ranks``)
        cfg.adapter.attention_rank, cfg.adapter.mlp_rank = spec["ranks"]
    cfg.train.steps = spec["steps"]
    cfg.train.warmup_steps = max(1, spec["steps"] // 10)
    set_seed(cfg.seed)
    ws = prepare(cfg, "cpu" if s["cpu"] else None)
    pad = ws.tokenizer.pad_token_id
    arch, n = get_architecture(ws.model), num_layers(ws.model)
    layers = spec["layers"]
    lora_cfg = standard_lora_config(arch, n, cfg.adapter) if layers is None else \
        aletheia_lora_config(arch, layers, cfg.adapter)
    set_seed(cfg.seed)
    model = apply_lora(ws.model, lora_cfg)
    out_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    first = next(train_batches(ws.train_items, cfg.train.batch_size, cfg.seed, pad))
    out = {"name": spec["name"], "kind": spec["kind"], "layers": layers, "steps": spec["steps"],
           "backward_floor": backward_floor(model, first), "trainable_params": out_params}
    gc.collect()
    release_freed_memory()
    out["peak_reset"] = reset_peak_rss()
    out["rss_before_train_bytes"] = (_status_kb("VmRSS") or 0) * 1024
    set_seed(cfg.seed)
    if spec["kind"] == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            res = train_lora(model, ws.train_items, cfg.train, cfg.seed, pad, metrics_path=Path(tmp) / "m.jsonl",
                             dtype=ws.dtype, progress=False)
            step_seconds = [json.loads(line)["step_seconds"] for line in open(Path(tmp) / "m.jsonl")]
        out.update(status=res.status, train_seconds=res.train_seconds, final_train_loss=res.final_loss)
    else:
        step_seconds, train_seconds = hf_trainer(model, ws, cfg)
        out.update(status="completed", train_seconds=train_seconds)
    out["peak_rss_bytes"] = peak_rss_bytes()  # training only: before the held-out evaluation
    out["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["step_seconds"] = step_seconds
    out["median_step_seconds"] = statistics.median(step_seconds[1:] or step_seconds)
    out["tokens"] = step_tokens(ws.train_items, cfg.train.batch_size, cfg.seed, pad, spec["steps"])
    if spec.get("eval", True):
        out["eval_loss"] = heldout_loss(model, eval_batches(ws.eval_items, 8, pad))
    return out


def hf_trainer(model, ws, cfg) -> tuple[list[float], float]:
    """The same run through HF ``Trainer``: our batches in our order, AdamW, warmup + cosine, clipping."""
    import torch
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from aletheia.data import train_batches

    t = cfg.train
    batches = list(itertools.islice(train_batches(ws.train_items, t.batch_size, cfg.seed,
                                                  ws.tokenizer.pad_token_id), t.steps))

    class Batches(Dataset):  # one element = one ready batch, so Trainer sees exactly ours
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=t.steps, per_device_train_batch_size=1, gradient_accumulation_steps=1,
            learning_rate=t.lr, weight_decay=t.weight_decay, adam_beta1=t.betas[0], adam_beta2=t.betas[1],
            adam_epsilon=t.eps, warmup_steps=min(t.warmup_steps, t.steps), lr_scheduler_type="cosine",
            max_grad_norm=t.max_grad_norm, optim="adamw_torch", logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to=[], use_cpu=ws.device.type == "cpu", dataloader_num_workers=0,
            dataloader_pin_memory=False, train_sampling_strategy="sequential", seed=cfg.seed,
            disable_tqdm=True, remove_unused_columns=False,
            bf16=ws.dtype == torch.bfloat16, fp16=ws.dtype == torch.float16,  # autocast, as our loop does
        )
        trainer = Trainer(model=model, args=args, train_dataset=Batches(), data_collator=lambda xs: xs[0],
                          callbacks=[StepClock()])
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    return [b - a for a, b in zip(ends, ends[1:])], total


def _finished(path: Path, spec: dict) -> bool:
    """A result of exactly this spec is already on disk (a resumed or concurrent bench wrote it)."""
    try:
        return json.loads(path.read_text()).get("spec") == spec
    except (OSError, ValueError):
        return False


def launch(spec: dict, out_dir: Path) -> subprocess.Popen:
    path = out_dir / "runs" / f"{spec['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, env=env)


def run_workers(specs: list[dict], out_dir: Path, reuse: bool) -> dict[str, dict]:
    """Run specs as subprocesses, all of one batch at once; reuse finished results when asked."""
    results, todo = {}, []
    for spec in specs:
        path = out_dir / "runs" / f"{spec['name']}.json"
        if reuse and path.is_file():
            data = json.loads(path.read_text())
            if data.get("spec") == spec:
                results[spec["name"]] = data
                continue
        todo.append(spec)
    procs = [(spec, launch(spec, out_dir)) for spec in todo]
    for spec, proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"worker {spec['name']} failed (exit {proc.returncode})")
        results[spec["name"]] = json.loads((out_dir / "runs" / f"{spec['name']}.json").read_text())
    return results


def rank_pair(text: str) -> tuple[int, int]:
    """``64/128`` -> (64, 128): attention and MLP ranks of extra cost-aware rows."""
    try:
        att, mlp = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not ATT/MLP ranks, e.g. 64/128") from None
    if att < 1 or mlp < 1:
        raise argparse.ArgumentTypeError(f"ranks must be at least 1, got {text}")
    return att, mlp


# --- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="Alpaca/chat JSON(L); missing or absent: the bootstrap set")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--time-budget", type=float, nargs="*", default=[0.55, 0.6, 0.65],
                    help="extra cost-aware rows, one per budget (fraction of standard step time); none: no rows")
    ap.add_argument("--ranks", nargs="*", default=[], metavar="ATT/MLP", type=rank_pair,
                    help="extra cost-aware rows (each --time-budget) with these attention/MLP ranks, e.g. 64/128")
    ap.add_argument("--match-parameters", action="store_true",
                    help="extra cost-aware rows (each --time-budget) whose MLP rank is raised to standard "
                         "LoRA's parameter count (--match-parameters of the CLI)")
    ap.add_argument("--extra-seeds", type=int, nargs="*", default=[],
                    help="train standard LoRA and every cost-aware row again with these seeds (same layers)")
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--timing-rounds", type=int, default=5, help="interleaved timed steps per configuration")
    ap.add_argument("--hf-steps", type=int, default=30, help="steps of the paired ours-vs-Trainer run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="the runs' precision (auto: fp32 on a CPU, bf16 on a recent GPU), as aletheia --dtype")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    ap.add_argument("--parallel", type=int, default=1,
                    help="training subprocesses at once (timing is interleaved anyway)")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of the same settings in OUTPUT/runs")
    ap.add_argument("--output", default="bench/results/selectors")
    ap.add_argument("--render", action="store_true", help="only rewrite the tables from OUTPUT/selectors.json")
    ap.add_argument("--retime", action="store_true",
                    help="only recalibrate and re-time the layer sets of OUTPUT/selectors.json (interleaved)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        spec, out = json.loads(a.worker), Path(a.worker_out)
        running = out.with_suffix(".running")
        if running.exists():  # another bench process is training this very spec: wait for its result
            while running.exists() and not _finished(out, spec):
                time.sleep(5)
        if _finished(out, spec):
            return
        running.write_text(str(os.getpid()))
        try:
            result = worker(spec)
            result["spec"] = spec
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(out)
        finally:
            running.unlink(missing_ok=True)
        return

    if a.render:
        print(write_tables(json.loads((Path(a.output) / "selectors.json").read_text()), Path(a.output)))
        return
    if a.retime:
        print(retime(a))
        return

    import torch

    from aletheia.architectures import get_architecture, num_layers
    from aletheia.config import ProbeConfig
    from aletheia.cost import CostModel, calibration_key, cost_cache_path, time_adapter_steps
    from aletheia.data import probe_batches, train_batches
    from aletheia.lora import aletheia_lora_config, standard_lora_config
    from aletheia.recipe import prepare
    from aletheia.selection import SelectionContext, select_layers
    from aletheia.utils import package_versions, set_seed

    if a.threads:
        torch.set_num_threads(a.threads)
    data = a.data
    if data and not Path(data).is_file():
        log(f"{data} not found: using the generated bootstrap set")
        data = None
    settings = {"data": data, "steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length,
                "lr": a.lr, "fraction": a.fraction, "eval_examples": a.eval_examples, "seed": a.seed,
                "threads": a.threads, "cpu": a.cpu, "dtype": a.dtype, "code": source_hash()}
    out_dir = Path(a.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_config(settings)
    set_seed(cfg.seed)
    ws = prepare(cfg, "cpu" if a.cpu else None)
    pad = ws.tokenizer.pad_token_id
    arch, n = get_architecture(ws.model), num_layers(ws.model)
    log(f"model {ws.model_path}: {n} layers; {len(ws.train_items)} train / {len(ws.eval_items)} held-out examples")

    from aletheia.data import eval_batches
    from aletheia.evaluation.loss import heldout_loss

    base_loss = heldout_loss(ws.model, eval_batches(ws.eval_items, 8, pad))
    log(f"base model held-out loss {base_loss:.4f}")

    # 1. selection (the cost model is calibrated afresh: a cached one may come from a quieter hour)
    pbatches = probe_batches(ws.train_items, cfg.probe.batches, cfg.probe.batch_size, cfg.seed, pad)
    rows = {}
    extra_rows = [(f"cost-aware (budget {b:g})", {"time_budget": b}, None) for b in a.time_budget or []]
    for att, mlp in a.ranks:
        extra_rows += [(f"cost-aware (budget {b:g}, ranks {att}/{mlp})", {"time_budget": b}, [att, mlp])
                       for b in a.time_budget or []]
    if a.match_parameters:
        extra_rows += [(f"cost-aware (budget {b:g}, matched parameters)", {"time_budget": b}, "matched")
                       for b in a.time_budget or []]
    variants = [(name, {}, None) for name in SELECTORS]
    variants[3:3] = extra_rows

    def adapter_of(ranks):
        if ranks == "matched":
            return cfg.adapter.replace(match_parameters=True)
        return cfg.adapter if ranks is None else cfg.adapter.replace(attention_rank=ranks[0], mlp_rank=ranks[1])

    for _, _, ranks in variants:
        cost_cache_path(calibration_key(ws.model, pbatches, adapter_of(ranks))).unlink(missing_ok=True)

    for label, extra, ranks in variants:
        name = label.split(" ")[0]
        pcfg = ProbeConfig(**{**cfg.probe.to_dict(), "selector": name, **extra})
        set_seed(cfg.seed)
        sel = select_layers(SelectionContext(ws.model, pbatches, pcfg, cfg.seed, False, adapter=adapter_of(ranks)))
        if ranks == "matched":  # from here on the row is its chosen set at its matched ranks
            ranks = [sel.details["attention_rank"], sel.details["mlp_rank"]]
        rows[label] = {"selector": label, "layers": sel.layers, "probe_seconds": sel.seconds, "ranks": ranks,
                       "details": {k: v for k, v in sel.details.items() if k != "matrix_snr"}}
        log(f"{label}: layers {sel.layers} in {sel.seconds:.1f}s")
        if label == "gradient-norm":
            scores = sel.probe.scores  # the paper's probe: the yardstick of "gradient signal kept"
    share = [x / sum(scores) for x in scores]
    for row in rows.values():
        row["signal_kept"] = sum(share[i] for i in row["layers"])
    rows = {"standard LoRA": {"selector": "standard LoRA", "layers": list(range(n)), "probe_seconds": 0.0,
                              "signal_kept": 1.0, "standard": True}, **rows}

    # cost model (calibrated by the cost-aware selector, cached): predictions at the training batches
    # Each cost-aware row is predicted by the model its own selection calibrated (its ranks); the
    # other rows by the default-rank one. Ratios come from one model: the row's.
    cost = CostModel.load(cost_cache_path(rows["cost-aware"]["details"]["cost_model_key"]))
    models = {}

    def model_of(row) -> CostModel:
        key = row.get("details", {}).get("cost_model_key")
        if key and key not in models:
            models[key] = CostModel.load(cost_cache_path(key))
        return models.get(key, cost)

    tokens = statistics.median(step_tokens(ws.train_items, cfg.train.batch_size, cfg.seed, pad, a.steps))
    for row in rows.values():
        row["predicted_step_seconds"] = (cost.predict_standard(cfg.adapter, tokens) if row.get("standard")
                                         else model_of(row).predict(row["layers"], adapter_of(row["ranks"]), tokens))

    # 2. interleaved step timing on real training batches, one adapter per distinct layer set
    configs, config_of = {}, {}
    for label, row in rows.items():
        key = "standard" if row.get("standard") else "L" + "-".join(map(str, row["layers"]))
        if row.get("ranks"):
            key += "-r" + "-".join(map(str, row["ranks"]))
        config_of[label] = key
        if key not in configs:
            configs[key] = standard_lora_config(arch, n, cfg.adapter) if row.get("standard") else \
                aletheia_lora_config(arch, row["layers"], adapter_of(row.get("ranks")))
    tbatches = list(itertools.islice(train_batches(ws.train_items, cfg.train.batch_size, cfg.seed, pad),
                                     a.timing_rounds + 1))
    log(f"interleaved timing: {len(configs)} configurations x {a.timing_rounds} rounds")
    times, toks = time_adapter_steps(ws.model, configs, tbatches, a.timing_rounds, 1, progress=True)
    for label, row in rows.items():
        key = config_of[label]
        row["timed_step_seconds"] = statistics.median(times[key])
        m = model_of(row)
        pred = [m.predict_standard(cfg.adapter, t) if row.get("standard")
                else m.predict(row["layers"], adapter_of(row.get("ranks")), t) for t in toks[key]]
        row["predicted_timed_seconds"] = statistics.median(pred)
        row["predicted_standard_timed_seconds"] = statistics.median(
            m.predict_standard(cfg.adapter, t) for t in toks[config_of["standard LoRA"]])
    std_t = rows["standard LoRA"]["timed_step_seconds"]
    for row in rows.values():
        row["speedup"] = std_t / row["timed_step_seconds"]
        row["predicted_speedup"] = row["predicted_standard_timed_seconds"] / row["predicted_timed_seconds"]
        row["prediction_error"] = row["predicted_timed_seconds"] / row["timed_step_seconds"] - 1

    # 3. training runs, one subprocess each (per-run peak memory); identical layer sets train once
    specs, seen = [], set()
    for label, row in rows.items():
        key = config_of[label]
        if key in seen:
            continue
        seen.add(key)
        spec = {"name": key, "kind": "ours", "layers": None if key == "standard" else row["layers"],
                "steps": a.steps, "settings": settings}
        if row.get("ranks"):
            spec["ranks"] = row["ranks"]
        specs.append(spec)
    for seed in a.extra_seeds:  # the same layer sets, trained again with another seed
        for spec in [s for s in specs if s["name"] == "standard" or
                     any(config_of[lb] == s["name"] for lb in rows if lb.startswith("cost-aware"))]:
            specs.append({**spec, "name": f"{spec['name']}-seed{seed}", "settings": {**settings, "seed": seed}})
    results = {}
    for i in range(0, len(specs), a.parallel):
        batch = specs[i:i + a.parallel]
        log(f"training {', '.join(s['name'] for s in batch)}")
        results.update(run_workers(batch, out_dir, a.reuse))
    std_run = results["standard"]
    for label, row in rows.items():
        r = results[config_of[label]]
        row.update(eval_loss=r["eval_loss"], peak_rss_bytes=r["peak_rss_bytes"], backward_floor=r["backward_floor"],
                   train_median_step_seconds=r["median_step_seconds"], train_seconds=r["train_seconds"],
                   final_train_loss=r.get("final_train_loss"))
        row["loss_ratio"] = r["eval_loss"] / std_run["eval_loss"]
        row["memory_ratio"] = r["peak_rss_bytes"] / std_run["peak_rss_bytes"]
        row["train_speedup"] = std_run["median_step_seconds"] / r["median_step_seconds"]
        row["trainable_params"] = r.get("trainable_params")
        row["loss_ratio_by_seed"] = {str(cfg.seed): row["loss_ratio"]}
        for seed in a.extra_seeds:
            other = results.get(f"{config_of[label]}-seed{seed}")
            if other:
                row["loss_ratio_by_seed"][str(seed)] = other["eval_loss"] / results[f"standard-seed{seed}"]["eval_loss"]
        row["mean_loss_ratio"] = statistics.mean(row["loss_ratio_by_seed"].values())

    # 4. our loop against HF Trainer + PEFT, run side by side
    log(f"ours vs HF Trainer, {a.hf_steps} steps each, side by side")
    pair = [{"name": f"{kind}-standard-{a.hf_steps}", "kind": kind, "layers": None, "steps": a.hf_steps,
             "settings": {**settings, "threads": a.threads or 1}, "eval": False} for kind in ("ours", "hf")]
    hf = run_workers(pair, out_dir, a.reuse)
    ours_s = hf[pair[0]["name"]]["median_step_seconds"]
    hf_s = hf[pair[1]["name"]]["median_step_seconds"]
    loop = {"steps": a.hf_steps, "ours_median_step_seconds": ours_s, "hf_median_step_seconds": hf_s,
            "ratio": ours_s / hf_s, "ours_train_seconds": hf[pair[0]["name"]]["train_seconds"],
            "hf_train_seconds": hf[pair[1]["name"]]["train_seconds"]}

    report = {"settings": settings, "model": ws.model_path, "num_layers": n, "hardware": cost.hardware,
              "torch_threads": torch.get_num_threads(), "versions": package_versions(), "base_eval_loss": base_loss,
              "dtype": str(ws.dtype).replace("torch.", ""),
              "cost_model": {"coefficients": cost.coefficients, "tokens": cost.tokens, "points": cost.points},
              "rows": list(rows.values()), "loop_vs_trainer": loop,
              "command": "python bench/selector_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (out_dir / "selectors.json").write_text(json.dumps(report, indent=1))
    table = write_tables(report, out_dir)
    print(table)


def retime(a) -> str:
    """The cost model checked out of sample, in one time window (no training).

    The calibration configurations (for every adapter rank setting among the rows) and the layer sets
    a full run chose are timed together, interleaved round by round, so the machine's speed is the
    same for all of them. The model is fitted on the calibration configurations only and predicts
    the chosen sets, which it has not seen.
    """
    import torch

    from aletheia.architectures import get_architecture, num_layers
    from aletheia.cost import (
        CostModel,
        adapter_ranks,
        calibration_layer_sets,
        fit_timed,
        hardware_name,
        module_shapes,
        step_features,
        time_adapter_steps,
    )
    from aletheia.data import train_batches
    from aletheia.lora import aletheia_lora_config, standard_lora_config
    from aletheia.recipe import prepare

    out_dir = Path(a.output)
    report = json.loads((out_dir / "selectors.json").read_text())
    s = report["settings"]
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    cfg = run_config(s)
    ws = prepare(cfg, "cpu" if s["cpu"] else None)
    pad = ws.tokenizer.pad_token_id
    arch, n = get_architecture(ws.model), num_layers(ws.model)
    shapes = module_shapes(ws.model, arch)

    def adapter_of(ranks):
        return cfg.adapter if not ranks else cfg.adapter.replace(attention_rank=ranks[0], mlp_rank=ranks[1])

    # name -> (layers, standard?, ranks, selectors using it)
    sets: dict[str, tuple] = {"standard": (list(range(n)), True, None, [])}
    for row in report["rows"]:
        if row.get("standard"):
            sets["standard"][3].append(row["selector"])
            continue
        key = "L" + "-".join(map(str, row["layers"])) + (
            "-r" + "-".join(map(str, row["ranks"])) if row.get("ranks") else "")
        sets.setdefault(key, (row["layers"], False, row.get("ranks"), []))[3].append(row["selector"])
    calib = {}
    for ranks in {tuple(v[2]) if v[2] else () for v in sets.values()}:
        for name, layers in calibration_layer_sets(n).items():
            calib[f"cal:{name}" + (f":r{ranks[0]}/{ranks[1]}" if ranks else "")] = (layers, False, list(ranks), [])
    calib["cal:standard"] = (list(range(n)), True, None, [])

    def lora(layers, std, ranks):
        return (standard_lora_config(arch, n, cfg.adapter) if std
                else aletheia_lora_config(arch, layers, adapter_of(ranks)))

    def feats(layers, std, ranks):
        return step_features(shapes, layers, adapter_ranks(arch, adapter_of(ranks), std))

    everything = {**calib, **sets}
    tb = list(itertools.islice(train_batches(ws.train_items, cfg.train.batch_size, cfg.seed, pad), a.timing_rounds + 1))
    log(f"one window: {len(calib)} calibration + {len(sets)} chosen configurations x {a.timing_rounds} rounds")
    times, toks = time_adapter_steps(ws.model, {k: lora(*v[:3]) for k, v in everything.items()}, tb,
                                     a.timing_rounds, 1, progress=True)
    coef, ref, scaled = fit_timed({k: feats(*v[:3]) for k, v in calib.items()}, times, toks)
    cost = CostModel(n, coef, ref, shapes, list(arch.attention), list(arch.mlp),
                     hardware=hardware_name(next(ws.model.parameters()).device))
    med = {k: statistics.median(scaled[k]) for k in everything}
    pred = {k: cost.predict_features(feats(*v[:3])) for k, v in everything.items()}
    lines = ["| selectors | lowest | measured step s | step-time ratio | predicted s | error | predicted ratio "
             "| ratio error |",
             "|---|---|---|---|---|---|---|---|"]
    for k, (lay, std, ranks, names) in sets.items():
        ratio, pratio = med["standard"] / med[k], pred["standard"] / pred[k]
        lines.append(f"| {', '.join(names)} | {min(lay)} | {med[k]:.2f} | {ratio:.2f}x | {pred[k]:.2f} | "
                     f"{pred[k] / med[k] - 1:+.1%} | {pratio:.2f}x | {pratio / ratio - 1:+.1%} |")
    errors = [pred[k] / med[k] - 1 for k in sets]
    fit_errors = [pred[k] / med[k] - 1 for k in calib]
    text = ("\n".join(lines) + f"\n\nFitted on {len(calib)} calibration configurations (in-sample error "
            f"{min(fit_errors):+.1%} to {max(fit_errors):+.1%}); the rows above are out of sample: error "
            f"{min(errors):+.1%} to {max(errors):+.1%}. Coefficients (s at {ref} tokens): "
            + ", ".join(f"{k} {v:.4f}" for k, v in cost.coefficients.items())
            + f". {a.timing_rounds} interleaved rounds; {cost.hardware}.\n")
    (out_dir / "retime.md").write_text(text)
    (out_dir / "retime.json").write_text(json.dumps({"times": times, "tokens": toks, "cost": cost.to_dict(),
                                                     "measured": med, "predicted": pred}, indent=1))
    return text


COLUMNS = [
    ("selector", "selector", "{}"),
    ("layers", "layers", "{}"),
    ("ranks_text", "ranks att/MLP", "{}"),
    ("params_m", "trainable M", "{:.2f}"),
    ("lowest", "lowest", "{}"),
    ("speedup", "step-time ratio (std/sel)", "{:.2f}x"),
    ("predicted_speedup", "predicted ratio", "{:.2f}x"),
    ("ratio_error", "ratio prediction error", "{:+.1%}"),
    ("prediction_error", "step-time prediction error", "{:+.1%}"),
    ("train_speedup", "ratio in training run", "{:.2f}x"),
    ("probe_seconds", "probe s", "{:.1f}"),
    ("peak_mb", "peak MB", "{:.0f}"),
    ("memory_ratio", "memory vs std", "{:.3f}"),
    ("eval_loss", "held-out loss", "{:.4f}"),
    ("loss_ratio", "loss vs std", "{:.4f}"),
    ("seeds_text", "loss vs std, each seed", "{}"),
    ("signal_kept", "gradient signal kept", "{:.1%}"),
]


def _layers_text(layers: list[int], n: int) -> str:
    if layers == list(range(n)):
        return f"all {n}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return f"{len(layers)}: " + ",".join(map(str, layers))


def write_tables(report: dict, out_dir: Path) -> str:
    from aletheia.config import AdapterConfig

    d = AdapterConfig()  # the bench trains with the default ranks unless a row says otherwise
    n = report["num_layers"]
    records = []
    for row in report["rows"]:
        ranks = [d.standard_rank] * 2 if row.get("standard") else row.get("ranks") or [d.attention_rank, d.mlp_rank]
        by_seed = row.get("loss_ratio_by_seed") or {}
        r = dict(row, lowest=min(row["layers"]), peak_mb=row["peak_rss_bytes"] / 2**20,
                 ranks_text="/".join(map(str, ranks)), params_m=(row.get("trainable_params") or 0) / 1e6,
                 seeds_text=(", ".join(f"{s}: {v - 1:+.2%}" for s, v in by_seed.items())
                             + f" (mean {statistics.mean(by_seed.values()) - 1:+.2%})") if len(by_seed) > 1 else "",
                 layers=_layers_text(row["layers"], n),
                 ratio_error=row["predicted_speedup"] / row["speedup"] - 1)
        records.append(r)
    with open(out_dir / "selectors.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([c[1] for c in COLUMNS])
        for r in records:
            w.writerow([r[c[0]] for c in COLUMNS])
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in records:
        lines.append("| " + " | ".join(c[2].format(r[c[0]]) for c in COLUMNS) + " |")
    loop = report["loop_vs_trainer"]
    s = report["settings"]
    lines += [
        "",
        f"Our standard-LoRA loop vs HF Trainer + PEFT ({loop['steps']} steps each, side by side): median step "
        f"{loop['ours_median_step_seconds']:.3f}s vs {loop['hf_median_step_seconds']:.3f}s, "
        f"time ratio ours/Trainer = {loop['ratio']:.3f}.",
        "",
        f"Settings: {s['steps']} steps, batch {s['batch_size']}, max length {s['max_length']}, lr {s['lr']}, "
        f"precision {report.get('dtype', 'float32')}, data {s['data'] or 'bootstrap'}, seed {s['seed']}, "
        f"{report['hardware']}. Base model held-out "
        f"loss {report['base_eval_loss']:.4f}. Peak memory: peak resident set of each run's own process "
        "during training (kernel high-water mark reset just before train_lora).",
    ]
    text = "\n".join(lines) + "\n"
    (out_dir / "selectors.md").write_text(f"Command: `{report['command']}`\n\n" + text)
    return text


if __name__ == "__main__":
    main()
