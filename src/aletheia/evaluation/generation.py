"""Batched greedy generation with the KV cache and stop strings.

Prompts are sorted by length and left-padded in batches; a batch stops as soon as every row has
produced a stop string or EOS. The completion is found by decoding prompt+generation together and
cutting the decoded prompt off: decoding only the new tokens drops the leading space of
SentencePiece tokens and would break the indentation of generated code.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..utils import mixed_precision, weights_dtype


class StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once its new text contains any stop string."""

    def __init__(self, tokenizer, prompt_len: int, stops: list[str]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = []
        for row in input_ids[:, self.prompt_len:]:
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            done.append(any(s in text for s in self.stops))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[:k]
    return ids


@torch.no_grad()
def generate_greedy(
    model, tokenizer, prompts: list[str], max_new_tokens: int, stops: list[str], batch_size: int = 8,
    add_special_tokens: bool = True, progress: bool = False, desc: str = "generate",
) -> list[str]:
    """Greedy completions of ``prompts`` (same order), each cut at its first stop string."""
    device = next(model.parameters()).device
    precision = mixed_precision(weights_dtype(model), device)  # the precision training computed in
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids))
    out: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        with precision:
            gen = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, use_cache=True, pad_token_id=pad, eos_token_id=sorted(eos_ids) or None,
                stopping_criteria=StoppingCriteriaList([StopOnStrings(tokenizer, width, stops)]) if stops else None,
                temperature=None, top_p=None, top_k=None,
            )
        for r, i in enumerate(rows):
            new = _strip_eos(gen[r, width:].tolist(), eos_ids)
            prompt_text = tokenizer.decode(encoded[i], skip_special_tokens=False)
            full = tokenizer.decode(encoded[i] + new, skip_special_tokens=False)
            completion = full[len(prompt_text):] if full.startswith(prompt_text) else tokenizer.decode(new)
            out[i] = cut_at_stop(completion, stops)
        bar.update(len(rows))
    bar.close()
    return out
