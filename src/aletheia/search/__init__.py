"""AutoResearch: an automated LoRA recipe search (paper §3.5) built on the campaign runner.

``run_search(cfg, output)`` probes once, scans fixed arms briefly, runs the best at full length next
to a standard LoRA baseline, pushes around the winner, optionally searches further with Optuna, and
validates with a replicated 2 × 2 factorial ablation; ``SEARCH_REPORT.md`` and
``search_frontier.png`` show every run on the quality–time plane. Each run is a campaign job, so any
campaign executor (local, ray, slurm) runs it, and a stopped search resumes where it stopped.
"""

from .ablation import factorial_2x2
from .config import (
                     STAGES,
                     AblationConfig,
                     ArmSpec,
                     FullConfig,
                     OptunaConfig,
                     PushConfig,
                     PushVariation,
                     ScanConfig,
                     SearchConfig,
                     load_search_config,
                     paper_arms,
                     paper_push,
)
from .report import pareto_front, write_search_report
from .runner import run_search

__all__ = ["STAGES", "AblationConfig", "ArmSpec", "FullConfig", "OptunaConfig", "PushConfig", "PushVariation",
           "ScanConfig", "SearchConfig", "factorial_2x2", "load_search_config", "paper_arms", "paper_push",
           "pareto_front", "run_search", "write_search_report"]
