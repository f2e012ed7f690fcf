"""Gradient probe (paper §3.2): a task-relevance score for every decoder block.

Definition. For probe batches b = 1..N and block l with parameters θ_l,

    score_l = Σ_b ‖ ∇_{θ_l} L(b) ‖₂

where L is the causal-LM loss of the batch (mean over response tokens; prompt and padding tokens are
masked exactly as in training, and the batch runs padding-free exactly where training does: the same
loss and gradients, so the same scores) and ‖·‖₂ is the L2 norm over *all* of the block's parameters
taken together, i.e. sqrt(Σ_p ‖∇p‖²). Embeddings, final norm and LM head are frozen and not scored.

Two modes give the same scores:

- ``chunked`` (the paper's): gradients enabled for ``chunk_size`` blocks at a time, so ⌈L/8⌉ × N
  forward-backward passes; gradient memory is bounded by one chunk.
- ``single-pass`` (default): every block at once, one pass per batch. A hook on each parameter
  reduces its gradient to a squared norm the moment it is accumulated and frees it, so gradient
  memory stays near one parameter's size and the probe costs N passes.

Scale. Under data parallelism each process probes whole batches (``b mod N``) and the per-batch
norms are summed across processes, so the scores equal the single-process ones. A model sharded with
FSDP2 (``fully_shard``) holds a slice of every gradient on each process: all processes run each
batch together, and a block's squared norm is the sum over processes of the squared norms of their
slices (exact: the slices partition the gradient). With ``device_map="auto"`` the per-layer sums are
gathered on the first device. With gradient checkpointing enabled on the model, the blocks recompute
their activations during backward while dropout stays off; the scores are unchanged.

Quantised weights (QLoRA's 4-bit ``Linear4bit``) hold no gradient. For such a layer the weight
gradient of a batch is ∇W = Σ_t g_t x_tᵀ (output gradients g, inputs x, over all tokens t), so its
norm is computed from the layer's inputs and output gradients: the score is the one the
full-precision weights would get for the same (dequantised) model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed, packing
from .architectures import _base_model, get_blocks
from .errors import AletheiaError
from .lm_loss import causal_lm_loss
from .scores import ranking, shares
from .utils import mixed_precision, weights_dtype


@dataclass
class ProbeResult:
    scores: list[float]
    """Raw score per layer: sum over batches of the block's gradient L2 norm."""
    per_batch: list[list[float]]
    """Gradient L2 norm per batch (rows) and layer (columns)."""
    losses: list[float]
    """Probe loss of each batch."""
    mode: str
    batches: int
    seconds: float
    passes: int
    """Forward-backward passes spent (N for single-pass, ⌈L/chunk⌉ × N for chunked)."""
    extra: dict = field(default_factory=dict)

    @property
    def normalized(self) -> list[float]:
        """Share of the total gradient signal per layer (sums to 1; see ``scores.shares``)."""
        return shares(self.scores)

    @property
    def ranking(self) -> list[int]:
        """Layer indices by descending score; ties go to the lower index (``scores.ranking``)."""
        return ranking(self.scores)

    def to_dict(self) -> dict:
        return {**asdict(self), "normalized_scores": self.normalized, "ranking": self.ranking}


def _activation_scored(block: nn.Module) -> list[nn.Module]:
    """Linear layers whose weight cannot hold a gradient (bitsandbytes 4-/8-bit weights)."""
    return [m for m in block.modules() if isinstance(m, nn.Linear) and not m.weight.is_floating_point()]


def _block_params(model: nn.Module) -> list[list[nn.Parameter]]:
    """Per block, the parameters that hold a gradient (not the weights ``_activation_scored`` covers)."""
    out = []
    for block in get_blocks(model):
        skip = {id(m.weight) for m in _activation_scored(block)}
        out.append([p for p in block.parameters() if p.is_floating_point() and id(p) not in skip])
    return out


def _hook_linears(model: nn.Module, layers, add) -> list:
    """Forward hooks that add ‖g_outᵀ x‖² of each activation-scored linear to ``add(layer, value)``."""
    blocks, handles = get_blocks(model), []
    for layer in layers:
        for module in _activation_scored(blocks[layer]):
            def forward_hook(_module, inputs, output, layer=layer):
                if not (torch.is_grad_enabled() and output.requires_grad):
                    return
                x = inputs[0].detach().flatten(0, -2).float()

                def on_grad(g: torch.Tensor) -> None:
                    weight_grad = g.detach().flatten(0, -2).float().T @ x
                    add(layer, weight_grad.double().pow(2).sum())

                output.register_hook(on_grad)
            handles.append(module.register_forward_hook(forward_hook))
    return handles


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    batch = {k: v.to(device) for k, v in batch.items()}
    with mixed_precision(weights_dtype(model), device):
        loss = causal_lm_loss(model, batch)
    if not torch.isfinite(loss):
        raise AletheiaError(f"the probe loss is not finite ({loss.item()}); try --dtype float32")
    return loss


def run_probe(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    mode: str = "single-pass",
    chunk_size: int = 8,
    progress: bool = True,
) -> ProbeResult:
    """Score every decoder block of ``model`` on ``batches`` (see the module docstring)."""
    if mode not in ("single-pass", "chunked"):
        raise AletheiaError(f"unknown probe mode '{mode}'; use single-pass or chunked")
    if not batches:
        raise AletheiaError("the probe needs at least one batch")
    device = next(model.parameters()).device
    blocks = _block_params(model)
    n_layers = len(blocks)
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()  # no dropout: the probe is a deterministic function of weights and batches
    checkpointing = _checkpointing(_base_model(model))
    if checkpointing:
        # transformers recomputes a block only when the block itself is in training mode; setting
        # the flag on the block alone keeps its dropout layers in eval mode.
        for block in get_blocks(model):
            block.training = True
    model.requires_grad_(False)
    per_batch = [[0.0] * n_layers for _ in batches]
    losses = [0.0] * len(batches)
    shards = distributed.sharded(model)  # FSDP2: every process runs every batch, on its slices
    mine = list(range(len(batches))) if shards else distributed.my_share(len(batches))
    start = time.perf_counter()
    try:
        run = _single_pass if mode == "single-pass" else partial(_chunked, chunk_size=chunk_size)
        passes = run(model, blocks, batches, device, per_batch, losses, progress, mine, shards)
    finally:
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    if distributed.active() and not shards:  # rows of batches other processes probed are zero here
        table = torch.tensor([row + [loss] for row, loss in zip(per_batch, losses, strict=True)], dtype=torch.float64,
                             device=device)
        table = distributed.sum_across_processes(table).tolist()
        per_batch, losses = [row[:-1] for row in table], [row[-1] for row in table]
        passes = int(distributed.sum_across_processes(torch.tensor([passes], device=device)).item())
    seconds = time.perf_counter() - start
    scores = [sum(row[layer] for row in per_batch) for layer in range(n_layers)]
    extra = {"processes": distributed.world_size(), "gradient_checkpointing": checkpointing,
             "padding_free": packing.padding_free(model)}
    return ProbeResult(scores, per_batch, losses, mode, len(batches), seconds, passes, extra)


def _checkpointing(model: nn.Module) -> bool:
    """Whether gradient checkpointing is on (transformers 5 renamed the property)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _sq_norm(grad: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm, reduced in fp32 without a float64 copy of the gradient (the hot path)."""
    return torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).double().square()


def _shard_sq_norms(blocks, device) -> torch.Tensor:
    """FSDP2: per block, Σ over processes of the squared norms of this process's gradient slices,
    which is the block's squared gradient norm (one all-reduce per batch); frees the gradients."""
    sq = torch.zeros(len(blocks), dtype=torch.float64, device=device)
    for layer, params in enumerate(blocks):
        for p in params:
            if p.grad is not None:
                sq[layer] += _sq_norm(p.grad.to_local()).to(device)
                p.grad = None
    return distributed.sum_across_processes(sq)


def _single_pass(model, blocks, batches, device, per_batch, losses, progress, mine, shards) -> int:
    sq = torch.zeros(len(blocks), dtype=torch.float64, device=device)

    def add(layer: int, value: torch.Tensor) -> None:
        sq[layer] += value.to(sq.device)

    def make_hook(layer: int):
        def hook(param: torch.Tensor) -> None:
            add(layer, _sq_norm(param.grad))
            param.grad = None  # free it now: gradient memory stays near one parameter's size
        return hook

    handles = _hook_linears(model, range(len(blocks)), add)
    for layer, params in enumerate(blocks):
        for p in params:
            p.requires_grad_(True)
            if not shards:  # FSDP2 writes its slices of the gradients after backward: read them then
                handles.append(p.register_post_accumulate_grad_hook(make_hook(layer)))
    try:
        for b in tqdm(mine, desc="probe (single-pass)", disable=not progress):
            sq.zero_()
            loss = _loss(model, batches[b], device)
            loss.backward()
            if shards:
                sq += _shard_sq_norms(blocks, sq.device)
            losses[b] = loss.item()
            per_batch[b] = sq.sqrt().tolist()
    finally:
        for h in handles:
            h.remove()
    return len(mine)


def _chunked(model, blocks, batches, device, per_batch, losses, progress, mine, shards, chunk_size) -> int:
    n_chunks = math.ceil(len(blocks) / chunk_size)
    bar = tqdm(total=n_chunks * len(mine), desc="probe (chunked)", disable=not progress)
    from_activations = [0.0] * len(blocks)  # squared weight-gradient norms of quantised linears

    def add(layer: int, value: torch.Tensor) -> None:
        from_activations[layer] += value.item()

    for c in range(n_chunks):
        chunk = range(c * chunk_size, min((c + 1) * chunk_size, len(blocks)))
        params = [p for layer in chunk for p in blocks[layer]]
        for p in params:
            p.requires_grad_(True)
        handles = _hook_linears(model, chunk, add)
        for b in mine:
            from_activations[:] = [0.0] * len(blocks)
            loss = _loss(model, batches[b], device)
            loss.backward()
            losses[b] = loss.item()
            sharded_sq = _shard_sq_norms(blocks, device).tolist() if shards else None
            for layer in chunk:
                # .item() per parameter: with device_map the block's parameters may sit on several GPUs
                sq = sharded_sq[layer] if shards else sum(_sq_norm(p.grad).item() for p in blocks[layer]
                                                          if p.grad is not None)
                per_batch[b][layer] = math.sqrt(sq + from_activations[layer])
                for p in blocks[layer]:
                    p.grad = None
            bar.update(1)
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(False)
    bar.close()
    return n_chunks * len(mine)
