"""Held-out loss and exact-match accuracy of greedy answers."""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import prompt_text
from ..examples import Example
from ..lm_loss import scored_logits
from ..utils import mixed_precision, weights_dtype


@torch.no_grad()
def heldout_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], progress: bool = False) -> float:
    """Token-weighted mean negative log-likelihood over response tokens (not a mean of batch means)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    precision = mixed_precision(weights_dtype(model), device)  # the precision training computed in
    for batch in tqdm(batches, desc="held-out loss", disable=not progress, leave=False):
        with precision:
            logits, targets, _ = scored_logits(model, {k: v.to(device) for k, v in batch.items()})
        total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += targets.numel()
    model.train(was_training)
    return total / max(count, 1)


def normalize_answer(text: str) -> str:
    """Lower-case, trim, collapse spaces and drop a trailing period: what exact match compares."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(".").strip()


@torch.no_grad()
def exact_match_accuracy(
    model: nn.Module, tokenizer, examples: list[Example], max_new_tokens: int = 24,
    batch_size: int = 8, progress: bool = False,
) -> dict:
    """Greedy answers for ``examples`` compared with their reference answers after normalisation."""
    examples = [e for e in examples if e.messages]
    if not examples:
        return {"accuracy": None, "n": 0, "correct": 0}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = mixed_precision(weights_dtype(model), device)  # the precision training computed in
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    correct, samples = 0, []
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="accuracy", disable=not progress, leave=False):
            chunk = examples[start:start + batch_size]
            prompts = [prompt_text(tokenizer, e) for e in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with precision:
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            for e, row in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                answer = tokenizer.decode(row, skip_special_tokens=True)
                ok = normalize_answer(answer) == normalize_answer(e.answer or "")
                correct += ok
                samples.append({"reference": e.answer, "answer": answer.strip(), "correct": bool(ok)})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return {"accuracy": correct / len(examples), "n": len(examples), "correct": correct, "samples": samples}
