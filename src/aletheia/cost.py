"""A cost model of one LoRA training step, calibrated on the user's model and hardware.

Why layer choice changes step time. Every step runs the forward pass through all blocks. The backward
pass only has to reach the *lowest* adapted block: below it nothing requires a gradient, so autograd
builds no graph there and keeps no activations (the base weights and embeddings are frozen and
nothing calls ``enable_input_require_grads``). Adapters add their own small forward, backward and
optimizer work. So for a set S of adapted layers in a model of L blocks,

    t(S) = intercept + per_block · (L − min S) + per_module · Σ_S (d_in + d_out) / 10⁴
           + per_mparam · (LoRA parameters of S in millions)

``intercept`` is the forward pass, head, loss and fixed per-step overhead; ``per_block`` is the
backward through one frozen block. An adapted module costs two things: work that does not depend
on its rank (its dropout, the scaled add of its output, the extra input gradient, its optimizer
bookkeeping: memory traffic over activations of width d_in and d_out, so ``per_module`` per 10⁴
units of d_in + d_out), and work proportional to its rank (``per_mparam``). On SmolLM2-135M on a CPU
the first dominates: an adapted layer costs more than a frozen block's backward, so a model with
only a parameter term predicts too little saving for sets of many layers. The coefficients are fitted
(least squares, non-negative) to a few timed steps of real adapter configurations on the user's
model, hardware and batch shape, interleaved so that load from other processes hits all
configurations alike, and cached under ``<cache>/cost/<key>.json``. The timed steps run the
layout training will run (padding-free where ``packing.padding_free``), and times scale with the
positions a micro-batch computes (its real tokens packed, batch x width padded); ``predict`` takes
the token count to predict for.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from . import packing
from .architectures import Architecture, get_architecture, get_blocks
from .config import AdapterConfig
from .errors import AletheiaError
from .lm_loss import causal_lm_loss
from .lora import aletheia_lora_config, standard_lora_config
from .utils import atomic_write_text, cache_dir, mixed_precision, weights_dtype

COST_MODEL_VERSION = 6  # 6: timed on the packed layout, tokens = positions computed
FEATURES = ("intercept", "per_block", "per_module", "per_mparam")


def module_shapes(model: nn.Module, arch: Architecture | None = None) -> list[dict[str, list[int]]]:
    """(in_features, out_features) of every LoRA target module, per block (fused experts not counted)."""
    arch = arch or get_architecture(model)
    targets = arch.target_modules("both")
    out = []
    for block in get_blocks(model, arch):
        shapes = {}
        for path, module in block.named_modules():
            name = next((t for t in targets if path == t or path.endswith("." + t)), None)
            base = getattr(module, "base_layer", module)  # already wrapped by PEFT
            if name is None or name in shapes or not isinstance(getattr(base, "weight", None), torch.Tensor):
                continue
            if hasattr(base, "in_features"):
                shapes[name] = [int(base.in_features), int(base.out_features)]
            elif base.weight.dim() == 2:  # GPT-2 Conv1D keeps its weight as (in, out)
                shapes[name] = [int(base.weight.shape[0]), int(base.weight.shape[1])]
        out.append(shapes)
    return out


def adapter_ranks(arch: Architecture, adapter: AdapterConfig, standard: bool = False) -> dict[str, int]:
    """Rank of each target module: ``standard_rank`` everywhere for standard LoRA, else the asymmetric ranks."""
    if standard:
        return {name: adapter.standard_rank for name in arch.target_modules("both")}
    ranks = {name: adapter.attention_rank for name in arch.attention}
    ranks.update({name: adapter.mlp_rank for name in arch.mlp})
    return {name: ranks[name] for name in arch.target_modules(adapter.modules)}


def matched_adapter(
    shapes: list[dict[str, list[int]]], attention: list[str], mlp: list[str], layers: list[int],
    adapter: AdapterConfig,
) -> AdapterConfig:
    """``adapter`` with the largest MLP rank (at least ``mlp_rank``) whose adapters on ``layers`` hold
    no more trainable parameters than standard LoRA's on every layer (``match_parameters``).

    A LoRA pair of rank r on a (d_in, d_out) module has r·(d_in + d_out) parameters. Only dense MLP
    modules are counted; fused expert parameters are not in ``shapes``, so an MoE keeps its ranks.
    """
    if not adapter.match_parameters or adapter.modules == "attention":
        return adapter

    def width(layer_ids, names):
        return sum(sum(shapes[i][n]) for i in layer_ids for n in names if n in shapes[i])

    standard = adapter.standard_rank * width(range(len(shapes)), list(attention) + list(mlp))
    attn = adapter.attention_rank * width(layers, attention) if adapter.modules == "both" else 0
    per_rank = width(layers, mlp)
    if per_rank == 0:
        return adapter
    return adapter.replace(mlp_rank=max(adapter.mlp_rank, (standard - attn) // per_rank))


def step_features(
    shapes: list[dict[str, list[int]]], layers: list[int], ranks: dict[str, int]
) -> dict[str, float]:
    """The cost model's inputs for adapters of ``ranks`` on ``layers``."""
    if not layers:
        raise AletheiaError("the cost of a step needs at least one adapted layer")
    adapted = [(shapes[layer][name], r) for layer in layers for name, r in ranks.items() if name in shapes[layer]]
    return {"intercept": 1.0, "per_block": float(len(shapes) - min(layers)),
            "per_module": sum(sum(shape) for shape, _ in adapted) / 1e4,
            "per_mparam": sum(r * sum(shape) for shape, r in adapted) / 1e6}


@dataclass
class CostModel:
    """Predicted seconds of one micro-batch step (forward + backward + optimizer) for a layer set."""

    num_layers: int
    coefficients: dict[str, float]
    """Seconds per unit of each feature, at ``tokens`` positions per micro-batch."""
    tokens: int
    """Positions a micro-batch step computes (``packing.step_tokens``) the coefficients refer to."""
    shapes: list[dict[str, list[int]]]
    attention: list[str]
    mlp: list[str]
    key: str = ""
    hardware: str = ""
    points: list[dict] = field(default_factory=list)
    """Calibration measurements: configuration, features, median and all timed seconds, prediction."""
    version: int = COST_MODEL_VERSION

    def features(self, layers: list[int], adapter: AdapterConfig | None = None,
                 standard: bool = False) -> dict[str, float]:
        arch = Architecture("cost", (), "layers", tuple(self.attention), tuple(self.mlp))
        ranks = adapter_ranks(arch, adapter or AdapterConfig(), standard)
        return step_features(self.shapes, sorted(layers), ranks)

    def predict_features(self, feats: dict[str, float], tokens: int | None = None) -> float:
        seconds = sum(self.coefficients[k] * feats[k] for k in FEATURES)
        return seconds * (tokens / self.tokens if tokens else 1.0)

    def predict(self, layers: list[int], adapter: AdapterConfig | None = None,
                tokens: int | None = None) -> float:
        """Seconds per micro-batch step with Aletheia adapters on ``layers``."""
        return self.predict_features(self.features(layers, adapter), tokens)

    def matched(self, layers: list[int], adapter: AdapterConfig) -> AdapterConfig:
        """The adapter ``layers`` train with: ``matched_adapter`` when ``match_parameters`` is on."""
        return matched_adapter(self.shapes, self.attention, self.mlp, sorted(layers), adapter)

    def predict_standard(self, adapter: AdapterConfig | None = None, tokens: int | None = None) -> float:
        """Seconds per micro-batch step of standard LoRA (every layer, ``standard_rank``)."""
        return self.predict_features(self.features(list(range(self.num_layers)), adapter, True), tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        return cls(**json.loads(Path(path).read_text()))


def fit_coefficients(rows: list[dict[str, float]], seconds: list[float]) -> dict[str, float]:
    """Least squares with non-negative coefficients (a negative cost is noise, not physics)."""
    active = list(FEATURES)
    y = np.asarray(seconds, dtype=np.float64)
    while True:
        x = np.asarray([[r[k] for k in active] for r in rows], dtype=np.float64)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(coef)))  # drop the most negative feature and refit
    return dict.fromkeys(FEATURES, 0.0) | {k: max(0.0, float(c)) for k, c in zip(active, coef)}


def fit_timed(
    features: dict[str, dict[str, float]], times: dict[str, list[float]], tokens: dict[str, list[int]]
) -> tuple[dict[str, float], int, dict[str, list[float]]]:
    """Fit the coefficients to the timed steps of the configurations named in ``features``.

    Every step (of every configuration in ``times``) is first scaled to the median token count
    (positions computed), since step time is close to linear in tokens. Returns the coefficients, that reference
    token count and the scaled seconds of every configuration.
    """
    ref = int(statistics.median(t for name in times for t in tokens[name]))
    scaled = {name: [t * ref / tok for t, tok in zip(times[name], tokens[name])] for name in times}
    rows = [features[name] for name in features for _ in scaled[name]]
    ys = [y for name in features for y in scaled[name]]
    return fit_coefficients(rows, ys), ref, scaled


def hardware_name(device: torch.device) -> str:
    """What the timings depend on: accelerator or CPU model, thread count, torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
        except OSError:
            lines = []
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                    platform.processor() or platform.machine())
        name = f"{name} x{os.cpu_count()}"
    return f"{device.type}:{name}; threads={torch.get_num_threads()}; torch={torch.__version__}"


def calibration_key(model: nn.Module, batches: list[dict[str, torch.Tensor]], adapter: AdapterConfig) -> str:
    """Cache key: model config, dtype, hardware, batch shape (size and width rounded to 32), layout,
    adapter."""
    p = next(model.parameters())
    config = getattr(getattr(model, "config", None), "to_dict", dict)()
    width = statistics.median(b["input_ids"].shape[1] for b in batches)
    payload = {
        "v": COST_MODEL_VERSION,
        "config": {k: v for k, v in sorted(config.items()) if isinstance(v, (int, float, str, bool, list))},
        "dtype": str(p.dtype), "hardware": hardware_name(p.device),
        "batch": [int(batches[0]["input_ids"].shape[0]), int(32 * round(width / 32))],
        "padding_free": packing.padding_free(model),
        "adapter": {k: v for k, v in adapter.to_dict().items() if k != "match_parameters"},  # not timed
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cost_cache_path(key: str) -> Path:
    return cache_dir() / "cost" / f"{key}.json"


def calibration_layer_sets(num_layers: int) -> dict[str, list[int]]:
    """Aletheia configurations that separate the features.

    Backward depth and the number of adapted modules vary apart (``bottom-1`` and ``even`` reach the
    bottom with 1 and L/2 layers, ``top-1`` and the upper sets stay shallow), and ``all`` differs from
    standard LoRA (also added by ``calibrate``) only in rank, which separates the per-rank cost.
    """
    n = num_layers
    sets = {
        "top-1": [n - 1],
        "bottom-1": [0],
        "even": list(range(0, n, 2)),
        "upper-half": list(range(n // 2, n)),
        "upper-quarter": list(range(n - max(1, n // 4), n)),
        "all": list(range(n)),
    }
    return {name: layers for name, layers in sets.items() if layers}


def _time_step(model, params, optimizer, batch, device, precision) -> float:
    """One step exactly as ``train_lora`` takes it: forward (under ``precision``), backward, clip,
    AdamW, zero grads."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with precision:
        loss = causal_lm_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def time_adapter_steps(
    model: nn.Module, configs: dict[str, LoraConfig], batches: list[dict[str, torch.Tensor]],
    rounds: int = 3, warmup: int = 1, progress: bool = False,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds and positions computed (``packing.step_tokens``) of ``rounds`` timed steps for each
    LoRA config, taken in turns.

    All configurations live on the model at once as named PEFT adapters and take turns step by step,
    on the same batch within a round and in an order rotated every round, so a burst of load from
    other processes hits them alike. The model is returned unchanged: the adapters are removed and
    the ``requires_grad`` flags restored.
    """
    device = next(model.parameters()).device
    precision = mixed_precision(weights_dtype(model), device)  # as train_lora computes
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    names = list(configs)
    peft_model = get_peft_model(model, configs[names[0]], adapter_name=names[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list[int]] = {name: [] for name in names}
    try:
        for name in names[1:]:
            peft_model.add_adapter(name, configs[name])
        optim = {}
        for name in names:
            peft_model.set_adapter(name)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optim[name] = (params, torch.optim.AdamW(params, lr=1e-6))
        peft_model.train()
        for r in range(warmup + rounds):
            batch = {k: v.to(device) for k, v in batches[r % len(batches)].items()}
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                peft_model.set_adapter(name)
                seconds = _time_step(peft_model, *optim[name], batch, device, precision)
                if r >= warmup:
                    times[name].append(seconds)
                    tokens[name].append(packing.step_tokens(peft_model, batch))
            if progress:
                print(f"aletheia: timing adapters, round {r + 1}/{warmup + rounds}", flush=True)
    finally:
        peft_model.unload()  # back to the plain base model
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    return times, tokens


def calibrate(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], adapter: AdapterConfig | None = None,
    rounds: int = 3, warmup: int = 1, cache: bool = True, progress: bool = False,
) -> CostModel:
    """Fit the cost model from timed steps of a few adapter configurations (cached per key).

    The steps are taken by ``time_adapter_steps``; the model is returned unchanged.
    """
    adapter = adapter or AdapterConfig()
    if not batches:
        raise AletheiaError("calibrating the cost model needs at least one batch")
    if rounds < 1:
        raise AletheiaError(f"rounds={rounds} must be at least 1")
    key = calibration_key(model, batches, adapter)
    path = cost_cache_path(key)
    if cache and path.is_file():
        try:
            cached = CostModel.load(path)
            if cached.version == COST_MODEL_VERSION:
                return cached
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is recalibrated, never trusted
    arch = get_architecture(model)
    n = len(get_blocks(model, arch))
    shapes = module_shapes(model, arch)
    configs = {"standard": (standard_lora_config(arch, n, adapter), list(range(n)), True, adapter)}
    for name, layers in calibration_layer_sets(n).items():
        configs[name] = (aletheia_lora_config(arch, layers, adapter), layers, False, adapter)
    # The rank-dependent cost is small next to the timing noise between the sets above, so one set
    # also trains at three times the rank (the MLP's; --match-parameters raises it about that far).
    upper = calibration_layer_sets(n)["upper-half"]
    wide = adapter.replace(attention_rank=3 * adapter.attention_rank) if adapter.modules == "attention" \
        else adapter.replace(mlp_rank=3 * adapter.mlp_rank)
    configs["upper-half-wide"] = (aletheia_lora_config(arch, upper, wide), upper, False, wide)

    times, tokens = time_adapter_steps(model, {name: c[0] for name, c in configs.items()}, batches,
                                       rounds, warmup, progress)
    features = {name: step_features(shapes, layers, adapter_ranks(arch, a, standard))
                for name, (_, layers, standard, a) in configs.items()}
    coef, ref_tokens, scaled = fit_timed(features, times, tokens)
    points = [{"name": name, "layers": layers, "standard": standard, "features": features[name],
               "seconds": statistics.median(scaled[name]), "all_seconds": scaled[name]}
              for name, (_, layers, standard, _) in configs.items()]
    result = CostModel(n, coef, ref_tokens, shapes, list(arch.attention), list(arch.mlp), key,
                       hardware_name(next(model.parameters()).device), points)
    for pt in points:
        pt["predicted"] = result.predict_features(pt["features"])
    if cache:
        result.save(path)
    return result


def backward_floor(model: nn.Module, batch: dict[str, torch.Tensor]) -> int | None:
    """Lowest block whose output carries autograd history in a training forward pass.

    Everything below it is computed without a graph, so PyTorch frees those activations at once.
    For a PEFT model with adapters on layers S this is ``min(S)``; a smaller value means something
    below the lowest adapter requires a gradient (unfrozen embeddings, ``enable_input_require_grads``).
    None: no block output needs a gradient.
    """
    blocks = get_blocks(model)
    tracked: dict[nn.Module, bool] = {}

    def hook(block, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        tracked[block] = bool(out.requires_grad)

    handles = [block.register_forward_hook(hook) for block in blocks]
    device = next(model.parameters()).device
    try:
        model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    return next((i for i, block in enumerate(blocks) if tracked.get(block)), None)
