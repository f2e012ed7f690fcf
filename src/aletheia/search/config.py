"""The search config: the base recipe, then one small typed config per stage (paper §3.5).

Stages run in this order: ``probe`` → ``scan`` (quick scan of fixed arms) → ``full`` (top candidates
and a standard LoRA baseline at the full step count) → ``push`` (variations around the winner) →
``optuna`` (optional, off by default) → ``ablation`` (2 × 2 factorial × seeds). Defaults are the
paper's: 8 arms × 150 steps, 500-step full runs, a 12-run 3-seed ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..campaign.spec import ExecutorConfig
from ..config import AdapterConfig, DataConfig, ProbeConfig, TrainConfig, over_cap
from ..errors import ConfigError
from ..typed_config import Config, at_least, duplicate_names, one_of, positive, within

STAGES = ("probe", "scan", "full", "push", "optuna", "ablation")
"""The stages of a search, in the order they run."""

MODULE_SETS = ("attention", "mlp", "both")
FACTORS = ("layers", "modules", "attention_rank", "mlp_rank", "lr")
"""The five settings an arm fixes; the ablation picks two of them."""


def _name_problems(name: str) -> list[str]:
    if name and all(c.isalnum() or c in "._-" for c in name):
        return []
    return [f"name={name!r} may only hold letters, digits, '.', '_' and '-'"]


@dataclass
class ArmSpec(Config):
    """One recipe candidate: how many probe-ranked layers, which modules, which ranks, which lr."""

    name: str = "arm"
    """Folder-safe name used in run ids, tables and the figure."""
    layers: int = 12
    """k: adapters go on the k layers with the highest probe scores."""
    modules: str = "both"
    """``attention``, ``mlp`` or ``both``."""
    attention_rank: int = 16
    """Rank of the attention adapters (unused when ``modules: mlp``)."""
    mlp_rank: int = 32
    """Rank of the MLP adapters (unused when ``modules: attention``)."""
    lr: float = 2e-4
    """Peak learning rate."""

    LIMITS = {"layers": at_least(1), "modules": one_of(MODULE_SETS), "attention_rank": at_least(1),
              "mlp_rank": at_least(1), "lr": positive(" (e.g. 2e-4)")}

    def problems(self) -> list[str]:
        return _name_problems(self.name) + [f"{self.name}: {q}" for q in super().problems()]

    def settings(self) -> dict[str, Any]:
        """The five factor values, for tables and the ablation."""
        return {k: getattr(self, k) for k in FACTORS}


def paper_arms() -> list[ArmSpec]:
    """The default quick-scan arms, modelled on the paper's Qwen2.5-3B search (36 layers).

    ``ffn_lr_high`` is the paper's search-stage winner (12 selected layers, MLP rank 64, attention
    rank 16); the other arms vary one thing at a time around it: module set, ranks, layer count, lr.
    """
    A = ArmSpec
    return [
        A("attn_only", 12, "attention", 16, 64, 2e-4),
        A("ffn_only", 12, "mlp", 16, 64, 2e-4),
        A("both_r16", 12, "both", 16, 16, 2e-4),
        A("ffn_heavy", 12, "both", 16, 64, 2e-4),
        A("ffn_lr_high", 12, "both", 16, 64, 4e-4),
        A("ffn_lr_low", 12, "both", 16, 64, 1e-4),
        A("layers_6", 6, "both", 16, 64, 2e-4),
        A("layers_18", 18, "both", 16, 64, 2e-4),
    ]


@dataclass
class ScanConfig(Config):
    """Quick scan: every arm for a few steps; the best go on to full runs."""

    steps: int = 150
    """Optimizer steps of each quick-scan run (the paper: 150)."""
    arms: list[ArmSpec] = field(default_factory=paper_arms)
    """The arms; edit them in YAML (each a mapping of ArmSpec keys)."""
    baseline: bool = True
    """Also run standard LoRA for ``steps``, so every scan arm has a measured speed ratio."""

    LIMITS = {"steps": at_least(1, " (the paper: 150)")}

    def problems(self) -> list[str]:
        p = super().problems() + over_cap(self.steps, "(the paper: 150)")
        if not self.arms:
            p.append("arms must list at least one arm")
        p += [f"arms.{q}" for arm in self.arms for q in arm.problems()]
        p += duplicate_names("arms", [a.name for a in self.arms], " (names must be unique)")
        return p


@dataclass
class FullConfig(Config):
    """Full runs: the top quick-scan candidates at the full step count, with a standard baseline."""

    steps: int = 500
    """Optimizer steps of full, push, optuna and ablation runs (the paper: 500)."""
    candidates: int = 3
    """How many quick-scan arms advance (by held-out loss; ties go to the faster arm)."""

    LIMITS = {"steps": at_least(1, " (the paper: 500)"), "candidates": at_least(1)}

    def problems(self) -> list[str]:
        return super().problems() + over_cap(self.steps, "(the paper: 500)")


@dataclass
class PushVariation(Config):
    """A change applied to the winner of the full runs."""

    name: str = "push"
    layers_delta: int = 0
    """Layers added to k (capped at the model's layer count)."""
    rank_factor: float = 1.0
    """Multiplies both ranks (rounded, at least 1)."""
    lr_factor: float = 1.0
    """Multiplies the learning rate."""

    def problems(self) -> list[str]:
        p = _name_problems(self.name)
        if self.rank_factor <= 0 or self.lr_factor <= 0:
            p.append(f"{self.name}: rank_factor and lr_factor must be positive")
        if self.layers_delta == 0 and self.rank_factor == 1.0 and self.lr_factor == 1.0:
            p.append(f"{self.name}: changes nothing (set layers_delta, rank_factor or lr_factor)")
        return p


def paper_push() -> list[PushVariation]:
    """More layers, higher ranks, both (the paper's 18-layer higher-rank push), lr up and down."""
    P = PushVariation
    return [P("more_layers", layers_delta=6), P("higher_ranks", rank_factor=2.0),
            P("more_layers_higher_ranks", layers_delta=6, rank_factor=2.0),
            P("lr_up", lr_factor=2.0), P("lr_down", lr_factor=0.5)]


@dataclass
class PushConfig(Config):
    """Push: variations around the full-run winner, at the full step count."""

    variations: list[PushVariation] = field(default_factory=paper_push)
    """Empty: skip the stage."""

    def problems(self) -> list[str]:
        p = [f"variations.{q}" for v in self.variations for q in v.problems()]
        return p + duplicate_names("variations", [v.name for v in self.variations])


@dataclass
class AblationConfig(Config):
    """A 2 × 2 factorial over the two most important factors, each cell once per seed."""

    seeds: list[int] = field(default_factory=lambda: [42, 123, 999])
    """Replicates per cell (the paper: 3 seeds, 12 runs)."""
    factors: dict[str, list] | None = None
    """Factor name -> its two levels, e.g. ``{modules: [attention, mlp], lr: [1e-4, 2e-4]}``.
    None: the two factors whose levels moved the quick-scan loss most, at the winner's level and the
    best other level. Other settings stay at the winner's."""
    alpha: float = 0.05
    """Significance level used in the report's wording."""

    LIMITS = {"alpha": within(0, 1, "both", ", e.g. 0.05")}

    def problems(self) -> list[str]:
        p = super().problems()
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            p.append(f"seeds={self.seeds} must be at least two distinct seeds (the paper: 42, 123, 999)")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            p.append(f"seeds={self.seeds} must be non-negative integers")
        if self.factors is not None:
            if not isinstance(self.factors, dict) or len(self.factors) != 2:
                p.append("factors must map exactly two factor names to their two levels, "
                         "e.g. {modules: [attention, mlp], lr: [0.0001, 0.0002]}")
            else:
                for name, levels in self.factors.items():
                    if name not in FACTORS:
                        p.append(f"factors: '{name}' is not a factor; use {', '.join(FACTORS)}")
                    elif not isinstance(levels, list) or len(levels) != 2 or levels[0] == levels[1]:
                        p.append(f"factors.{name}={levels} must be two different levels")
                    else:
                        for level in levels:
                            try:
                                arm = ArmSpec.from_dict({name: level})
                            except ConfigError as exc:
                                p.append(f"factors.{name}: {exc}")
                                continue
                            p += [f"factors.{q.split(': ', 1)[-1]}" for q in arm.problems()]
        return p


@dataclass
class OptunaConfig(Config):
    """Optional search beyond the fixed arms (needs ``optuna``); its trials are ordinary runs."""

    trials: int = 0
    """Trials to run after the push stage (0: skip the stage)."""
    sampler: str = "tpe"
    """``tpe`` (seeded) or ``random``."""
    pruner: str = "median"
    """``median``: each trial first trains for ``scan.steps`` and stops there when its loss is worse
    than the median of earlier trials at that point; ``none``: every trial runs the full steps."""
    layers: list[int] = field(default_factory=lambda: [4, 24])
    """Range of k (inclusive; capped at the model's layer count)."""
    modules: list[str] = field(default_factory=lambda: list(MODULE_SETS))
    ranks: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Choices for both attention and MLP ranks."""
    lr: list[float] = field(default_factory=lambda: [5e-5, 1e-3])
    """Range of the learning rate (log scale)."""

    LIMITS = {"trials": at_least(0), "sampler": one_of(("tpe", "random")), "pruner": one_of(("median", "none"))}

    def problems(self) -> list[str]:
        p = super().problems()
        if len(self.layers) != 2 or not 1 <= self.layers[0] <= self.layers[1]:
            p.append(f"layers={self.layers} must be [low, high] with 1 <= low <= high")
        if not self.modules or any(m not in MODULE_SETS for m in self.modules):
            p.append(f"modules={self.modules} must list some of attention, mlp, both")
        if not self.ranks or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            p.append(f"ranks={self.ranks} must list positive integers")
        if len(self.lr) != 2 or not 0 < self.lr[0] <= self.lr[1]:
            p.append(f"lr={self.lr} must be [low, high] with 0 < low <= high")
        return p


@dataclass
class SearchConfig(Config):
    """``aletheia search``: an automated recipe search on one model and one dataset."""

    name: str = "search"
    """Title used in the report."""
    description: str = ""
    model: str = "default"
    """Hub id, local folder, ``default`` (embedded SmolLM2-135M-Instruct) or ``random:FAMILY[:LAYERS]``."""
    seed: int = 42
    """Seed of the probe and of every run outside the ablation."""
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Alpha ratio, dropout and ``standard_rank`` (the baseline); arms set ranks and modules."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch, warmup, optimizer; the stages set ``steps`` and the arms set ``lr``."""
    scan: ScanConfig = field(default_factory=ScanConfig)
    full: FullConfig = field(default_factory=FullConfig)
    push: PushConfig = field(default_factory=PushConfig)
    optuna: OptunaConfig = field(default_factory=OptunaConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    device: str | None = None
    """cpu, cuda ... (None: cuda when available)."""
    eval_accuracy_examples: int = 0
    """Held-out bootstrap items answered greedily for exact-match accuracy (0: off; it is slow)."""
    tie_decimals: int = 3
    """Held-out losses equal to this many decimals count as a tie, won by the faster run."""

    LIMITS = {"seed": at_least(0), "eval_accuracy_examples": at_least(0), "tie_decimals": within(0, 8)}

    def problems(self) -> list[str]:
        p = super().problems()
        if not self.model:
            p.append("model must name a model (hub id, folder, 'default' or 'random:llama')")
        if self.probe.layers is not None:
            p.append("probe.layers must stay empty: each arm takes its k layers from the probe ranking")
        return p


def load_search_config(path: str | Path) -> SearchConfig:
    """Read and validate a search YAML file."""
    if not Path(path).exists():
        raise ConfigError(f"search config not found: {path} (pass a YAML file, e.g. configs/search-smoke.yaml)")
    return SearchConfig.from_yaml(path).validate()  # type: ignore[return-value]
