"""Small typed configs, one per stage, that validate themselves and round-trip through YAML.

Each config is a dataclass. ``from_dict`` rejects unknown keys; ``validate`` reports every problem
at once (not just the first) as one ``ConfigError``. ``RunConfig`` bundles the stages for the CLI and
for the ``config.yaml`` saved in every run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


class _Config:
    """Mixin: dict/YAML round trip, unknown-key rejection and collected validation."""

    def problems(self) -> list[str]:  # overridden per stage
        return []

    def validate(self) -> "_Config":
        problems = self.problems()
        for f in fields(self):  # nested configs report with a prefix
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                problems += [f"{f.name}.{p}" for p in value.problems()]
        if problems:
            raise ConfigError("invalid config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "_Config":
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(
                f"unknown key(s) in {cls.__name__}: {', '.join(hints)}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        types = get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            typ = types[name]
            if isinstance(typ, type) and issubclass(typ, _Config):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"'{name}' must be a mapping, got {value!r}")
                value = typ.from_dict(value)
            kwargs[name] = _coerce(name, value, typ)
        return cls(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "_Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (pass an existing YAML file to --config)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "_Config":
        return dataclasses.replace(self, **changes)


def duplicate_names(field_name: str, names: list[str], hint: str = "") -> list[str]:
    """One problem line per name that appears more than once in a list of named items."""
    return [f"{field_name}: '{n}' appears twice{hint}" for n in sorted({n for n in names if names.count(n) > 1})]


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Light type checking for YAML values: ints where floats are expected, lists for tuples."""
    if value is None:
        return None
    origin = get_origin(typ)
    args = [a for a in get_args(typ) if a is not type(None)]
    if origin is not None and len(args) == 1 and get_origin(typ) is not list:
        typ, origin = args[0], get_origin(args[0])  # Optional[X]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"'{name}' must be a number, got {value!r}")
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"'{name}' must be true or false, got {value!r}")
    if origin is list and not isinstance(value, list):
        raise ConfigError(f"'{name}' must be a list, got {value!r}")
    return value


DTYPES = ("auto", "float32", "bfloat16", "float16")
PROBE_MODES = ("single-pass", "chunked")
METHODS = ("aletheia", "standard")


@dataclass
class DataConfig(_Config):
    """Where the training examples come from and how they are split and tokenised."""

    path: str | None = None
    """Alpaca JSON/JSONL, chat ``messages`` JSONL, plain ``text`` JSONL, or an HF dataset id.
    None: the built-in bootstrap instruction set (generated from ``seed``)."""
    max_length: int = 256
    """Longest tokenised example; longer ones are truncated (response tokens last)."""
    eval_fraction: float = 0.1
    """Share of examples held out for evaluation (deterministic split from the seed)."""
    max_eval_examples: int = 64
    """Cap on held-out examples, so evaluation stays cheap on big datasets."""
    bootstrap_size: int = 600
    """Number of generated examples when ``path`` is None."""

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
        return p


@dataclass
class ProbeConfig(_Config):
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
class AdapterConfig(_Config):
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
class TrainConfig(_Config):
    """The shared recipe of both methods (paper §3.4): AdamW, cosine with warmup, fixed steps."""

    steps: int = 200
    """Optimizer steps (each of ``grad_accum`` micro-batches)."""
    batch_size: int = 4
    """Examples per micro-batch."""
    grad_accum: int = 2
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warmup steps before cosine decay (capped at ``steps``)."""
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    dtype: str = "auto"
    """auto: bf16 on GPUs that support it, fp16 with loss scaling on older GPUs, fp32 on CPU."""
    log_every: int = 10
    """Print a progress line every N steps (metrics.jsonl records every step)."""
    tensorboard: bool = False
    """Also write metrics to TensorBoard (needs the ``tensorboard`` package)."""

    def problems(self) -> list[str]:
        p = []
        if self.steps < 1:
            p.append(f"steps={self.steps} must be a positive number of optimizer steps (e.g. 200)")
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
        return p


QUANTIZE = ("4bit",)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class ArchitectureConfig(_Config):
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
class MemoryConfig(_Config):
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
class RunConfig(_Config):
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
