"""Small typed configs, one per stage, that validate themselves and round-trip through YAML.

Each config is a ``typed_config.Config`` dataclass: ``from_dict`` rejects unknown keys and wrong
types; ``validate`` reports every problem at once (not just the first) as one ``ConfigError``.
``RunConfig`` bundles the stages for the CLI and for the ``config.yaml`` saved in every run folder.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field

from . import trackers as tracking
from .typed_config import Config, at_least, one_of, positive, within

MAX_STEPS = 10_000_000
"""Largest accepted number of optimizer steps. Even the smallest model manages a few hundred steps a
second at best, so ten million is weeks of training: a larger value is a typo (an extra 000) or an
exponent (1e12), and it would otherwise run, print nothing useful and never finish."""


def over_cap(steps: int, hint: str) -> list[str]:
    """The problem of a step count beyond ``MAX_STEPS``, if it is one (``hint``: the usual value)."""
    return [f"steps={steps} is beyond the cap of {MAX_STEPS:,} optimizer steps {hint}"] if steps > MAX_STEPS else []


DTYPES = ("auto", "float32", "bfloat16", "float16")
METHODS = ("aletheia", "standard")
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
"""``train.scheduler`` -> the name ``transformers.get_scheduler`` knows it by (each after the warmup)."""


@dataclass
class DataConfig(Config):
    """Where the training examples come from and how they are split and tokenised."""

    path: str | None = None
    """A JSON/JSONL, Parquet or CSV file, a folder of them (or one written by ``save_to_disk``), or an
    HF hub dataset id; rows in Alpaca, ``messages``, ShareGPT ``conversations`` or ``text`` format.
    None: the built-in bootstrap instruction set (generated from ``seed``)."""
    subset: str | None = None
    """The dataset's configuration name (``load_dataset(path, subset)``), e.g. ``main`` for gsm8k."""
    split: str = "train"
    """Split of a hub dataset or folder to read, e.g. ``test`` or ``train[:1000]``."""
    columns: dict[str, str] | None = None
    """Our field -> the dataset's column, e.g. ``{instruction: question, output: answer}``; fields:
    instruction, input, output, system, messages, conversations, text."""
    train_on: str = "all_assistant"
    """Chats: loss on every assistant turn (``all_assistant``) or on the last one (``last_assistant``)."""
    chat_template: str | None = None
    """None: the tokenizer's own (none: the Alpaca prompt); a built-in (``chatml``, ``llama3``,
    ``alpaca``) or a Jinja file. Saved with the run's tokenizer."""
    max_length: int = 256
    """Longest tokenised example; longer ones are truncated (response tokens last)."""
    eval_fraction: float = 0.1
    """Share of examples held out for evaluation (deterministic split from the seed)."""
    max_eval_examples: int = 64
    """Cap on held-out examples, so evaluation stays cheap on big datasets."""
    bootstrap_size: int = 600
    """Number of generated examples when ``path`` is None."""
    padding_free: bool = True
    """Lay each micro-batch's examples end to end (``position_ids`` restarting per example) instead of
    padding them: the same loss and gradients, no padding computed. False: padded batches (the
    paper's setting). A model whose attention cannot keep packed examples apart stays padded and
    says so."""

    LIMITS = {"max_length": at_least(8, " (e.g. 256)"), "eval_fraction": within(0, 1, "both", " (e.g. 0.1)"),
              "max_eval_examples": at_least(1), "bootstrap_size": at_least(10),
              "train_on": one_of(("all_assistant", "last_assistant"))}

    def problems(self) -> list[str]:
        from .chat_templates import resolve_chat_template  # lazy, as the selectors below
        from .data_sources import ROW_FIELDS
        from .errors import AletheiaError

        p, example = super().problems(), "e.g. {instruction: question, output: answer}"
        if self.columns is not None:
            if not isinstance(self.columns, dict) or not self.columns:
                p.append(f"columns={self.columns!r} must map fields to column names, {example}")
            else:
                for ours, col in self.columns.items():
                    if ours not in ROW_FIELDS:
                        close = difflib.get_close_matches(str(ours), ROW_FIELDS, n=1)
                        p.append(f"columns: {ours!r} is not a field" + (f" (did you mean {close[0]!r}?)" if close
                                 else "") + f"; the fields are {', '.join(ROW_FIELDS)}")
                    elif not isinstance(col, str) or not col:
                        p.append(f"columns: {ours} must name a column, got {col!r} ({example})")
        if not isinstance(self.split, str) or not self.split:
            p.append(f"split={self.split!r} must name a split, e.g. train")
        if self.chat_template is not None:
            try:
                resolve_chat_template(self.chat_template)
            except AletheiaError as exc:
                p.append(str(exc).removeprefix("data."))
        return p


@dataclass
class ProbeConfig(Config):
    """Gradient probe and layer selection (paper §3.2-3.3)."""

    batches: int = 5
    """Probe batches (forward-backward passes per scored block)."""
    batch_size: int = 4
    """Examples per probe batch."""
    mode: str = "single-pass"
    """``single-pass``: all blocks in one pass per batch; ``chunked``: the paper's 8 blocks at a time."""
    chunk_size: int = 8
    """Blocks with gradients enabled at once in ``chunked`` mode."""
    selector: str = "gradient-norm"
    """Layer scorer from the selector registry (``aletheia.selection.SELECTORS``)."""
    fraction: float = 0.5
    """Share of layers kept, by score (at least one layer)."""
    layers: list[int] | None = None
    """Explicit layer indices; overrides the probe's choice when given."""
    time_budget: float | None = None
    """``cost-aware`` only: largest predicted step time as a fraction of standard LoRA's (e.g. 0.6);
    the selector then keeps the most gradient signal that fits. None: same number of layers as
    ``fraction``, never predicted slower than the top-``fraction`` rule."""
    tradeoff: float | None = None
    """``cost-aware`` only: weight λ of step time; maximise signal kept − λ·(time / standard time)."""
    calibration_rounds: int = 3
    """``cost-aware`` only: timed steps per adapter configuration when calibrating the cost model."""
    time_budget_fallback: bool = False
    """``cost-aware`` with ``time_budget``: when no layer set fits the budget, take the fastest set
    instead of stopping with an error (the campaign's ``cost_aware`` recipe sets it)."""

    LIMITS = {"batches": at_least(1, " (the paper uses 5)"), "batch_size": at_least(1),
              "mode": one_of(("single-pass", "chunked")), "chunk_size": at_least(1, " (the paper uses 8)"),
              "fraction": within(0, 1, "low", ", e.g. 0.5 for half the layers"),
              "time_budget": within(0, 1, "low", ", a fraction of standard LoRA's step time"),
              "tradeoff": at_least(0, " (0 keeps the most signal regardless of time)"),
              "calibration_rounds": at_least(1)}

    def problems(self) -> list[str]:
        from .selection import SELECTORS  # lazy: the registry imports torch

        p = super().problems()
        if self.layers is not None and (not self.layers or any(not isinstance(i, int) or i < 0 for i in self.layers)):
            p.append(f"layers={self.layers} must be a non-empty list of layer indices >= 0")
        elif self.layers is not None and len(set(self.layers)) != len(self.layers):
            twice = sorted({i for i in self.layers if self.layers.count(i) > 1})
            p.append(f"layers={self.layers} lists layer {', '.join(map(str, twice))} more than "
                     f"once; give each index once, e.g. {sorted(set(self.layers))}")
        if isinstance(self.selector, str) and self.selector not in SELECTORS:
            p.append(f"selector={self.selector!r} is unknown; use one of {', '.join(sorted(SELECTORS))}")
        if self.time_budget is not None and self.tradeoff is not None:
            p.append("time_budget and tradeoff are alternatives; give one of them")
        return p


@dataclass
class AdapterConfig(Config):
    """LoRA ranks and placement. Standard LoRA uses ``standard_rank`` on every layer."""

    attention_rank: int = 16
    """Rank of attention adapters on selected layers."""
    mlp_rank: int = 32
    """Rank of MLP adapters on selected layers (asymmetric: may differ from attention)."""
    alpha_ratio: float = 2.0
    """lora_alpha = alpha_ratio * rank for every module."""
    standard_rank: int = 16
    """Rank of every module in the standard (all-layer) baseline."""
    dropout: float = 0.05
    """LoRA dropout."""
    modules: str = "both"
    """Which module groups get adapters: ``attention``, ``mlp`` or ``both``."""
    match_parameters: bool = False
    """Raise the selected layers' MLP rank (never below ``mlp_rank``) until the adapter holds as
    many trainable parameters as standard LoRA without exceeding them: the paper's selection keeps
    most of the parameters (4–16% fewer) by giving fewer layers larger ranks."""

    LIMITS = {"attention_rank": at_least(1), "mlp_rank": at_least(1), "standard_rank": at_least(1),
              "alpha_ratio": positive(" (2.0 gives alpha = 2*r)"), "dropout": within(0, 1, "high"),
              "modules": one_of(("attention", "mlp", "both"))}

    def problems(self) -> list[str]:
        p = super().problems()
        if self.match_parameters and self.modules == "attention":
            p.append("match_parameters raises the MLP rank, but modules=attention trains no MLP adapters; "
                     "use modules both or mlp")
        return p


@dataclass
class TrainConfig(Config):
    """The shared recipe of both methods (paper §3.4): AdamW, warmup then cosine, steps or epochs."""

    steps: int = 200
    """Optimizer steps (each of ``grad_accum`` micro-batches); not used when ``epochs`` is given."""
    epochs: float | None = None
    """Passes over the training split instead of ``steps``: ceil(epochs x batches per epoch /
    grad_accum) optimizer steps, the number recorded as ``steps`` in summary.json."""
    scheduler: str = "cosine"
    """Learning-rate schedule after the warmup: ``cosine`` (the paper's), ``linear`` or ``constant``."""
    batch_size: int = 4
    """Examples per micro-batch."""
    grad_accum: int = 2
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warmup steps before the schedule (capped at ``steps``)."""
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    dtype: str = "auto"
    """auto: bf16 on GPUs that support it, fp16 with loss scaling on older GPUs, fp32 on CPU."""
    log_every: int = 10
    """Print a progress line every N steps (metrics.jsonl records every step)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to log to, any of ``tensorboard``, ``mlflow``, ``wandb`` (offline, inside the
    run folder, unless the environment names a server or W&B login)."""
    tensorboard: bool = False
    """Same as adding ``tensorboard`` to ``report_to`` (older configs)."""
    save_every: int | None = None
    """Write a checkpoint every N optimizer steps (None: only when SIGTERM/SIGINT stops the run)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted as new ones are written."""
    eval_every: int | None = None
    """Held-out loss every N optimizer steps (and at the last), into metrics.jsonl and the trackers.
    None: before and after training only."""
    compile: bool = False
    """Run each decoder block through ``torch.compile`` (dynamic shapes: one graph, shared by the
    blocks, for every packed length). Measured on CPU at max length 512 (``bench/step_options.py``):
    1.25x faster per step in fp32 (losses within 2.4e-7), 1.37x in bf16 (within bf16 rounding,
    4e-3), after a compile of 25-35 s in the first step, so worth it for runs of more than a few
    dozen steps."""
    fsdp: bool = False
    """Shard the model, its gradients and optimizer state over the processes of a data-parallel launch
    (FSDP2 through accelerate, one shard unit per decoder block); ``accelerate launch --use_fsdp
    --fsdp_version 2`` does the same. One process: no effect."""

    LIMITS = {"steps": at_least(1, " optimizer step (e.g. 200)"), "scheduler": one_of(SCHEDULERS),
              "epochs": within(0, MAX_STEPS, "low", " (e.g. 3)", says="a positive number of passes over the data"),
              "batch_size": at_least(1), "grad_accum": at_least(1), "lr": positive(" (e.g. 2e-4)"),
              "warmup_steps": at_least(0), "weight_decay": at_least(0), "max_grad_norm": positive(),
              "dtype": one_of(DTYPES), "log_every": at_least(1),
              "save_every": at_least(1, " (or leave it out: no periodic checkpoints)"), "keep_last": at_least(1),
              "eval_every": at_least(1, " (or leave it out)")}

    def problems(self) -> list[str]:
        p = super().problems() + over_cap(self.steps, "(weeks of training even for a tiny model); check for a "
                                                      "typo, e.g. 200")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            p.append(f"betas={self.betas} must be two numbers in [0, 1)")
        if unknown := [name for name in self.report_to if name not in tracking.TRACKERS]:
            p.append(f"report_to={self.report_to}: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                     f"use any of {', '.join(tracking.TRACKERS)}")
        else:  # before any model loads: a tracker that cannot be imported would fail after the training
            p += [f"report_to: {name} is not installed; pip install {tracking.TRACKERS[name]} (or leave "
                  f"{name} out)" for name in self.tracker_names() if not tracking.installed(name)]
        return p

    def steps_for(self, batches_per_epoch: int) -> int:
        """The optimizer steps of this run: ``steps``, or ``epochs`` passes over that many micro-batches."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * batches_per_epoch / self.grad_accum))

    def tracker_names(self) -> list[str]:
        """``report_to`` with ``tensorboard`` added when ``tensorboard: true``, each name once."""
        names = list(self.report_to) + (["tensorboard"] if self.tensorboard else [])
        return list(dict.fromkeys(names))


@dataclass
class ArchitectureConfig(Config):
    """Where the blocks and adapter modules are, for models outside the registry (or to override it).

    Leave empty to use the registry entry for the model's ``model_type``, else the generic search."""

    blocks_path: str | None = None
    """Dotted path to the ModuleList of decoder blocks, e.g. ``model.layers``."""
    attention_modules: list[str] | None = None
    """Attention linear modules (leaf names or paths inside a block), e.g. ``[q_proj, v_proj]``."""
    mlp_modules: list[str] | None = None
    """MLP linear modules, e.g. ``[up_proj, down_proj]``."""

    def problems(self) -> list[str]:
        p = []
        for name in ("attention_modules", "mlp_modules"):
            value = getattr(self, name)
            if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
                p.append(f"{name}={value} must be a non-empty list of module names, e.g. [q_proj, v_proj]")
        if self.blocks_path is not None and not self.blocks_path.strip("."):
            p.append(f"blocks_path={self.blocks_path!r} must be a dotted path such as model.layers")
        return p


@dataclass
class MemoryConfig(Config):
    """Ways to fit a model that does not fit plainly: 4-bit weights, several GPUs, recomputation."""

    quantize: str | None = None
    """``4bit``: QLoRA (bitsandbytes NF4, double quantisation, bf16 compute; needs a CUDA GPU)."""
    device_map: str | None = None
    """``auto``: spread the model over all visible GPUs (for models bigger than one GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (probe and training): less memory, same numbers, slower."""

    LIMITS = {"quantize": one_of(("4bit",), " or leave it empty"),
              "device_map": one_of(("auto", "balanced", "balanced_low_0", "sequential"))}


@dataclass
class RunConfig(Config):
    """Everything one ``aletheia probe|train|compare`` run needs; saved as ``config.yaml``."""

    model: str | None = None
    """Hub id, local folder or .gguf file. None: the embedded SmolLM2-135M-Instruct."""
    method: str = "aletheia"
    """``aletheia`` (probe-selected layers) or ``standard`` (every layer)."""
    seed: int = 42
    """Controls probe batches, data order, held-out split and LoRA init."""
    output: str = "runs/default"
    """Run folder (``compare`` writes ``standard/`` and ``aletheia/`` below it)."""
    eval_accuracy_examples: int = 32
    """Held-out bootstrap items answered greedily for exact-match accuracy (0 disables)."""
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    LIMITS = {"method": one_of(METHODS), "eval_accuracy_examples": at_least(0), "seed": at_least(0)}


def run_config(plan: Config, **fields) -> RunConfig:
    """The ``RunConfig`` of one run a campaign or search plans: copies of its shared sections (data,
    probe, adapter, train), so no run's change reaches another, and ``fields`` on top."""
    shared = {name: copy.deepcopy(getattr(plan, name)) for name in ("data", "probe", "adapter", "train")}
    return RunConfig(**(shared | fields))
