"""Padding-free micro-batches: a micro-batch's examples laid end to end, attention kept inside each.

A right-padded micro-batch of B examples and width W computes B·W positions; on Alpaca-format data
a third of them are padding at max length 256. Packed, the same examples sit end to end in one row
(or a few rows, see ``row_tokens``) with ``position_ids`` that restart at 0 for each example and no
``attention_mask``. transformers 5 reads the restarts (``masking_utils.find_packed_sequence_indices``)
and confines attention to each example for sdpa, eager and flex attention, sliding windows
included; flash attention takes its varlen path from the same ``position_ids``. The first label of
each example is -100 (``DataCollatorWithFlattening``'s separator), so no example scores a
prediction made from the one before it.

Exact: every example sees the positions, tokens and attention it sees padded, so the same examples
in the same micro-batch give the same loss (mean over the same scored tokens) and the same
gradients up to float rounding. ``tests/test_padding_free.py`` checks this on every registered
family (``Architecture.packed_attention``), Mixtral's router loss included.

Where. ``causal_lm_loss`` repacks the padded batch it is given just before the forward pass, so
training, the probe, the held-out loss and the cost model's timed steps run one layout, the
micro-batches are those of the padded stream by construction, and a batch's ``attention_mask``
still counts its real tokens. ``set_padding_free(model, False)`` (``data.padding_free: false``)
keeps today's padded batches; so does a model whose attention is not known to confine packed
examples, and that is said once.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening

from .architectures import _base_model, get_architecture
from .data import IGNORE_INDEX
from .errors import AletheiaError

PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
"""Attention implementations whose transformers code confines packed examples by ``position_ids``."""
ROW_TOKENS: int | None = None
"""Token cap of one packed row; None puts a micro-batch in one row (see ``pack``). Off: a cap of one
or two max lengths did not make steps faster at 128 tokens, where one row's attention is widest
(``bench/row_cap.py``)."""

_flatten = DataCollatorWithFlattening(return_tensors="pt")


def set_padding_free(model: nn.Module, enabled: bool) -> None:
    """Pin ``data.padding_free`` to ``model``: every stage that computes a step on it reads this."""
    _base_model(model).aletheia_padding_free = bool(enabled)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why packed examples may not stay apart in ``model``'s attention, or None when they do."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    kind = getattr(config, "model_type", None) or type(base).__name__
    try:
        family = get_architecture(model)
    except AletheiaError:
        family = None
    if family is None or not family.packed_attention:
        name = f"{family.family} architecture" if family else "architecture not found"
        return (f"{kind} ({name}): packed attention is not verified for this model, "
                "so its examples could see each other")
    attn = getattr(config, "_attn_implementation", None)
    if attn not in PACKED_ATTENTION:
        return (f"attention implementation {attn!r} does not confine packed examples "
                f"(these do: {', '.join(PACKED_ATTENTION)})")
    return None


def padding_free(model: nn.Module) -> bool:
    """Whether steps on ``model`` run packed: asked for (the default) and exact for this model.

    A model asked to pack that cannot gets padded batches and one line saying so (once per model).
    """
    base = _base_model(model)
    if not getattr(base, "aletheia_padding_free", True):
        return False
    reason = unsupported_reason(model)
    if reason is None:
        return True
    if not getattr(base, "aletheia_padding_free_said", False):
        print(f"aletheia: padding-free batches off: {reason}; using padded batches "
              "(set data.padding_free: false to silence this)", file=sys.stderr, flush=True)
        base.aletheia_padding_free_said = True
    return False


def _router_loss(model: nn.Module) -> bool:
    return bool(getattr(getattr(_base_model(model), "config", None), "output_router_logits", False))


def unpad(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The examples of a padded batch: the tokens and labels where ``attention_mask`` is 1."""
    keep = batch["attention_mask"].bool()
    return [{"input_ids": ids[m], "labels": lab[m]}
            for ids, lab, m in zip(batch["input_ids"], batch["labels"], keep, strict=True)]


def _rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """Example indices per row: first-fit by decreasing length into rows of ``row_tokens`` (at
    least the longest example); one row when ``row_tokens`` is None."""
    if row_tokens is None:
        return [list(range(len(lengths)))]
    cap = max(row_tokens, max(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if at is None:
            rows.append([])
            room.append(cap)
            at = len(rows) - 1
        rows[at].append(i)
        room[at] -= lengths[i]
    return [sorted(r) for r in rows]


def pack(items: list[dict], row_tokens: int | None = None, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Padding-free collation of ``items`` (``input_ids`` and ``labels`` each): ``input_ids``,
    ``position_ids`` and ``labels`` of shape [rows, width].

    One row (``row_tokens`` None) has no padding at all. With a cap, the rows are filled first-fit
    and the shorter ones end in a run of ``pad_id`` that is a sequence of its own (its positions
    restart at 0, its labels are -100), which no example attends to.
    """
    lengths = [len(it["input_ids"]) for it in items]
    flat = [_flatten([items[i] for i in row]) for row in _rows(lengths, row_tokens)]
    width = max(f["input_ids"].shape[1] for f in flat)
    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "position_ids": [], "labels": []}
    for f in flat:
        tail = width - f["input_ids"].shape[1]
        out["input_ids"].append(F.pad(f["input_ids"], (0, tail), value=pad_id))
        out["labels"].append(F.pad(f["labels"], (0, tail), value=IGNORE_INDEX))
        out["position_ids"].append(torch.cat([f["position_ids"], torch.arange(tail).unsqueeze(0)], 1))
    return {k: torch.cat(v) for k, v in out.items()}


def for_model(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` as a step on ``model`` computes it: packed when ``padding_free(model)``, else as given.

    A model with a router loss (Mixtral) packs into one row: that loss averages over every token the
    model sees, so row padding would change it.
    """
    if "position_ids" in batch or "attention_mask" not in batch or not padding_free(model):
        return batch
    row_tokens = None if _router_loss(model) else ROW_TOKENS
    device = batch["input_ids"].device
    packed = pack(unpad({k: batch[k].cpu() for k in ("input_ids", "labels", "attention_mask")}), row_tokens)
    return {k: v.to(device) for k, v in packed.items()}


def step_tokens(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Positions a step on ``model`` computes for ``batch`` (what its time scales with)."""
    return int(for_model(model, batch)["input_ids"].numel())
