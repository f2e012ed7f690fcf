"""Evaluation: held-out loss, MMLU, GSM8K, HumanEval (sandboxed) and forgetting vs the base model.

``run_suite(model, tokenizer, tasks, EvalConfig(...))`` is the one entry point; ``aletheia eval`` and
``aletheia compare --eval`` are built on it.
"""

from .loss import exact_match_accuracy, heldout_loss
from .suite import TASKS, EvalConfig, run_suite

__all__ = ["TASKS", "EvalConfig", "exact_match_accuracy", "heldout_loss", "run_suite"]
