"""HumanEval: greedy pass@1 over all 164 problems, executed only in the sandbox.

Completions are generated from the raw prompt with the Codex paper's stop strings and decoded together
with the prompt (see ``generation``). Each program is prompt + completion + the problem's tests +
``check(entry_point)``, run in a fresh sandboxed process; nothing runs unless the user allowed it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from .generation import generate_greedy
from .sandbox import isolation, run_program
from .sources import load_humaneval

STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
NOT_ALLOWED = ("HumanEval executes model-written code; pass --allow-code-execution to run it in the sandbox "
               "(separate process, limits, no network), or leave humaneval out of --tasks")


def program_for(problem: dict[str, Any], completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def execute(programs: list[str], timeout: float, memory_mib: int, workers: int,
            progress: bool = False) -> list[dict[str, Any]]:
    """Run every program in its own sandboxed process (``workers`` at a time)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda p: run_program(p, timeout, memory_mib), programs),
                            total=len(programs), desc="HumanEval tests", disable=not progress, leave=False))
    return [{"passed": r.passed, "status": r.status, "detail": r.detail} for r in results]


def evaluate_humaneval(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    if not cfg.allow_code_execution:
        return {"pass@1": None, "skipped": NOT_ALLOWED}
    data = load_humaneval(cfg.humaneval_path, cfg.cache_dir, cfg.hub, cfg.pypi)
    problems = data.problems[: cfg.humaneval_n] if cfg.humaneval_n else data.problems
    completions = generate_greedy(model, tokenizer, [p["prompt"] for p in problems], cfg.humaneval_max_new_tokens,
                                  STOPS, cfg.batch_size, progress=progress, desc="HumanEval")
    runs = execute([program_for(p, c) for p, c in zip(problems, completions)], cfg.timeout, cfg.memory_mib,
                   cfg.workers, progress)
    passed = sum(r["passed"] for r in runs)
    items = [{"task_id": p["task_id"], "completion": c, **r} for p, c, r in zip(problems, completions, runs)]
    return {
        "pass@1": passed / len(problems) if problems else None, "n": len(problems), "passed": passed,
        "source": data.source,
        "decoding": {"greedy": True, "max_new_tokens": cfg.humaneval_max_new_tokens, "stop": STOPS},
        "sandbox": {**isolation(), "timeout_s": cfg.timeout, "memory_mib": cfg.memory_mib},
        "items": items,
    }
