"""Small typed configs, one per stage, that validate themselves and round-trip through YAML.

Each config is a ``typed_config.Config`` dataclass: ``from_dict`` rejects unknown keys and wrong
types; ``validate`` reports every problem at once (not just the first) as one ``ConfigError``.
``RunConfig`` bundles the stages for the CLI and for the ``config.yaml`` saved in every run folder.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from . import trackers as tracking
from .typed_config import Config

MAX_STEPS = 10_000_000
"""Largest accepted number of optimizer steps. Even the smallest model manages a few hundred steps a
second at best, so ten million is weeks of training: a larger value is a typo (an extra 000) or an
exponent (1e12), and it would otherwise run, print nothing useful and never finish."""


DTYPES = ("auto", "float32", "bfloat16", "float16")
PROBE_MODES = ("single-pass", "chunked")
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

    def problems(self) -> list[str]:
        p = []
        if self.max_length < 8:
            p.append(f"max_length={self.max_length} is too small (use at least 8, e.g. 256)")
        if not 0.0 < self.eval_fraction < 1.0:
            p.append(f"eval_fraction={self.eval_fraction} must be between 0 and 1 (e.g. 0.1)")
        if self.max_eval_examples < 1:
            p.append(f"max_eval_examples={self.max_eval_examples} must be at least 1")
        if self.bootstrap_size < 10:
            p.append(f"bootstrap_size={self.bootstrap_size} must be at least 10")
        return p + self._source_problems()

    def _source_problems(self) -> list[str]:
        from .chat_templates import resolve_chat_template  # lazy, as the selectors below
        from .data_sources import ROW_FIELDS
        from .errors import AletheiaError

        p, example = [], "e.g. {instruction: question, output: answer}"
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
        if self.train_on not in ("all_assistant", "last_assistant"):
            p.append(f"train_on={self.train_on!r} is unknown; use all_assistant or last_assistant")
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

    def problems(self) -> list[str]:
        p = []
        if self.batches < 1:
            p.append(f"batches={self.batches} must be at least 1 (the paper uses 5)")
        if self.batch_size < 1:
            p.append(f"batch_size={self.batch_size} must be at least 1")
        if self.mode not in PROBE_MODES:
            p.append(f"mode={self.mode!r} is unknown; use one of {', '.join(PROBE_MODES)}")
        if self.chunk_size < 1:
            p.append(f"chunk_size={self.chunk_size} must be at least 1 (the paper uses 8)")
        if not 0.0 < self.fraction <= 1.0:
            p.append(f"fraction={self.fraction} must be in (0, 1], e.g. 0.5 for half the layers")
        if self.layers is not None and (
            not self.layers or any(not isinstance(i, int) or i < 0 for i in self.layers)
        ):
            p.append(f"layers={self.layers} must be a non-empty list of layer indices >= 0")
        elif self.layers is not None and len(set(self.layers)) != len(self.layers):
            twice = sorted({i for i in self.layers if self.layers.count(i) > 1})
            p.append(f"layers={self.layers} lists layer {', '.join(map(str, twice))} more than "
                     f"once; give each index once, e.g. {sorted(set(self.layers))}")
        if isinstance(self.selector, str):
            from .selection import SELECTORS  # lazy: the registry imports torch

            if self.selector not in SELECTORS:
                p.append(f"selector={self.selector!r} is unknown; use one of "
                         f"{', '.join(sorted(SELECTORS))}")
        if self.time_budget is not None and not 0.0 < self.time_budget <= 1.0:
            p.append(f"time_budget={self.time_budget} must be in (0, 1], a fraction of standard LoRA's step time")
        if self.tradeoff is not None and self.tradeoff < 0:
            p.append(f"tradeoff={self.tradeoff} must be >= 0 (0 keeps the most signal regardless of time)")
        if self.time_budget is not None and self.tradeoff is not None:
            p.append("time_budget and tradeoff are alternatives; give one of them")
        if self.calibration_rounds < 1:
            p.append(f"calibration_rounds={self.calibration_rounds} must be at least 1")
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

    def problems(self) -> list[str]:
        p = []
        for name in ("attention_rank", "mlp_rank", "standard_rank"):
            if getattr(self, name) < 1:
                p.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.alpha_ratio <= 0:
            p.append(f"alpha_ratio={self.alpha_ratio} must be positive (2.0 gives alpha = 2*r)")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.modules not in ("attention", "mlp", "both"):
            p.append(f"modules={self.modules!r} must be attention, mlp or both")
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
    fsdp: bool = False
    """Shard the model, its gradients and optimizer state over the processes of a data-parallel launch
    (FSDP2 through accelerate, one shard unit per decoder block); ``accelerate launch --use_fsdp
    --fsdp_version 2`` does the same. One process: no effect."""

    def problems(self) -> list[str]:
        p = []
        if self.steps < 1:
            p.append(f"steps={self.steps} must be a positive number of optimizer steps (e.g. 200)")
        elif self.steps > MAX_STEPS:
            p.append(f"steps={self.steps} is beyond the cap of {MAX_STEPS:,} optimizer steps "
                     "(weeks of training even for a tiny model); check for a typo, e.g. 200")
        if self.epochs is not None and not 0 < self.epochs <= MAX_STEPS:
            p.append(f"epochs={self.epochs} must be a positive number of passes over the data (e.g. 3)")
        if self.scheduler not in SCHEDULERS:
            p.append(f"scheduler={self.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}")
        if self.batch_size < 1:
            p.append(f"batch_size={self.batch_size} must be at least 1")
        if self.grad_accum < 1:
            p.append(f"grad_accum={self.grad_accum} must be at least 1")
        if not self.lr > 0:
            p.append(f"lr={self.lr} must be positive (e.g. 2e-4)")
        if self.warmup_steps < 0:
            p.append(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.weight_decay < 0:
            p.append(f"weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            p.append(f"betas={self.betas} must be two numbers in [0, 1)")
        if self.max_grad_norm <= 0:
            p.append(f"max_grad_norm={self.max_grad_norm} must be positive")
        if self.dtype not in DTYPES:
            p.append(f"dtype={self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        if self.log_every < 1:
            p.append(f"log_every={self.log_every} must be at least 1")
        if self.save_every is not None and self.save_every < 1:
            p.append(f"save_every={self.save_every} must be at least 1 (or leave it out: no periodic "
                     "checkpoints)")
        if self.keep_last < 1:
            p.append(f"keep_last={self.keep_last} must be at least 1")
        if self.eval_every is not None and self.eval_every < 1:
            p.append(f"eval_every={self.eval_every} must be at least 1 (or leave it out)")
        unknown = [name for name in self.report_to if name not in tracking.TRACKERS]
        if unknown:
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


QUANTIZE = ("4bit",)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


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

    def problems(self) -> list[str]:
        p = []
        if self.quantize is not None and self.quantize not in QUANTIZE:
            p.append(f"quantize={self.quantize!r} is unknown; use {', '.join(QUANTIZE)} or leave it empty")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            p.append(f"device_map={self.device_map!r} is unknown; use one of {', '.join(DEVICE_MAPS)}")
        return p


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

    def problems(self) -> list[str]:
        p = []
        if self.method not in METHODS:
            p.append(f"method={self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.eval_accuracy_examples < 0:
            p.append(f"eval_accuracy_examples={self.eval_accuracy_examples} must be >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            p.append(f"seed={self.seed} must be a non-negative integer")
        return p
