"""The causal-LM loss, with the output head run only on the positions that are scored.

HF models apply the head to every position and the loss then drops prompt and padding positions.
The head is wide: on SmolLM2-135M it maps 576 → 49,152 per token, the matmul work of eight decoder
blocks, and on instruction data about half the positions are prompt or padding. Gathering the
scored positions before the head gives the same loss and gradients (up to float rounding) with less
time and memory, for standard LoRA and Aletheia alike. Training, the probe, the cost model's timed
steps and the held-out loss all use this one function, so they measure the same step. It is also
where a padded batch becomes padding-free (``packing.for_model``), for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import packing
from .data import IGNORE_INDEX


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq] mask of the positions whose next token carries a label (what the loss scores)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


@contextmanager
def _head_on(head: nn.Module | None, mask: torch.Tensor) -> Iterator[None]:
    """While open, ``head`` sees only the hidden states at ``mask`` ([N, hidden] instead of [B, T, hidden])."""
    if head is None:
        yield
        return

    def gather(module, args):
        if args and torch.is_tensor(args[0]) and args[0].dim() == 3 and args[0].shape[:2] == mask.shape:
            return (args[0][mask], *args[1:])
        return None

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def scored_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], forward: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Logits [N, vocab] at the scored positions, their targets [N], and the model's output.

    ``forward`` is what to call (a DDP wrapper of ``model``, say); ``model`` is where the head is
    found. A model whose head is not reached through its output-embedding module still works: its
    full logits are then indexed at the same positions. A padded ``batch`` runs packed where
    ``packing.padding_free(model)``; the targets then come in the packed order.
    """
    batch = packing.for_model(model, batch)
    labels = batch["labels"]
    mask = scored_positions(labels)
    targets = labels[:, 1:][mask[:, :-1]]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "position_ids" in inputs and "attention_mask" not in inputs:
        inputs["use_cache"] = False  # transformers detects packed rows only without a KV cache
    get_head = getattr(model, "get_output_embeddings", None)
    with _head_on(get_head() if get_head else None, mask):
        out = (forward or model)(**inputs)
    logits = out.logits
    if logits.dim() == 3:  # the gather did not happen
        logits = logits[mask]
    return logits, targets, out


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], forward: nn.Module | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens: what HF's ``model(**batch).loss`` computes.

    An MoE model that returns a router loss gets it added with its config's coefficient, as HF does
    when it is given labels.
    """
    logits, targets, out = scored_logits(model, batch, forward)
    loss = F.cross_entropy(logits.float(), targets)
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        loss = loss + getattr(model.config, "router_aux_loss_coef", 0.0) * aux.to(loss.device)
    return loss
