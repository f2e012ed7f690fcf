"""MMLU: a stratified, seeded subset scored the way lm-evaluation-harness scores it.

Each choice is the continuation " A" ... " D" after ``...\\nAnswer:``; its score is the summed
log-probability of the continuation tokens, where the continuation tokens are found by tokenising
context+continuation together and cutting the context's tokens off. No letter token id is ever
hard-coded (a tokenizer may merge " A" differently, which is the bug the paper hit on Llama-70B).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import AletheiaError
from ..utils import mixed_precision, weights_dtype
from .sources import LETTERS, MMLUData, load_mmlu


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Questions per subject: proportional to subject size (largest remainder), at least one each."""
    total = sum(sizes.values())
    if n <= 0 or n >= total:
        return dict(sizes)
    if n < len(sizes):
        raise AletheiaError(f"an MMLU subset of {n} cannot hold one question from each of {len(sizes)} "
                            f"subjects; use --mmlu-n {len(sizes)} or more")
    quota = {s: n * k / total for s, k in sizes.items()}
    alloc = {s: max(1, int(q)) for s, q in quota.items()}
    by_remainder = sorted(sizes, key=lambda s: (-(quota[s] - int(quota[s])), s))
    i = 0
    while sum(alloc.values()) < n:
        s = by_remainder[i % len(by_remainder)]
        if alloc[s] < sizes[s]:
            alloc[s] += 1
        i += 1
    by_excess = sorted(sizes, key=lambda s: (alloc[s] - quota[s], alloc[s]), reverse=True)
    i = 0
    while sum(alloc.values()) > n:  # only when the at-least-one floor overshoots
        s = by_excess[i % len(by_excess)]
        if alloc[s] > 1:
            alloc[s] -= 1
        i += 1
    return alloc


def stratified_subset(data: MMLUData, n: int, seed: int) -> list[tuple[str, int]]:
    """The (subject, index) list of the subset; same data, n and seed give the same list."""
    sizes = {s: len(items) for s, items in sorted(data.test.items()) if items}
    alloc = allocate(sizes, n)
    rng = random.Random(seed)
    chosen: list[tuple[str, int]] = []
    for subject in sorted(alloc):
        chosen += [(subject, i) for i in sorted(rng.sample(range(sizes[subject]), alloc[subject]))]
    return chosen


def read_questions(path: str | Path) -> list[tuple[str, int]]:
    """A saved (subject, index) list: a JSON list, or any JSON holding ``mmlu.questions`` (eval.json)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AletheiaError(f"MMLU question list not found: {p} (pass a JSON list or an earlier eval.json)")
    found = _find_questions(json.loads(p.read_text()))
    if found is None:
        raise AletheiaError(f"{p} holds no MMLU question list ([[subject, index], ...] or mmlu.questions)")
    return [(str(s), int(i)) for s, i in found]


def _find_questions(obj: Any):
    if isinstance(obj, list) and obj and all(isinstance(x, list) and len(x) == 2 for x in obj):
        return obj
    if isinstance(obj, dict):
        if isinstance(obj.get("mmlu"), dict) and "questions" in obj["mmlu"]:
            return obj["mmlu"]["questions"]
        for value in obj.values():
            found = _find_questions(value)
            if found is not None:
                return found
    return None


def format_question(item: dict[str, Any], with_answer: bool = False) -> str:
    text = item["question"].strip() + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, item["choices"]))
    return text + "\nAnswer:" + (f" {LETTERS[item['answer']]}" if with_answer else "")


def build_prompt(item: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    """lm-eval's ``mmlu`` prompt: subject description, few-shot examples, then the question."""
    subject = item["subject"].replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(format_question(s, True) + "\n\n" for s in shots) + format_question(item)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens, from tokenising them together (lm-eval's ``_encode_pair``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return whole[: len(ctx)], whole[len(ctx):]


def _max_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


class PrefixCache:
    """KV cache of a shared prompt prefix (description + few-shot examples of one subject).

    The few-shot block is the same for every question of a subject, so its keys and values are
    computed once; each question then runs only its own tokens. Used only when the prefix tokens are
    exactly the first tokens of the full context, so the scores equal a full forward pass.
    """

    def __init__(self, model, ids: list[int]):
        self.ids, self.past = ids, None
        if len(ids) > 1:
            device = next(model.parameters()).device
            out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
            self.past = getattr(out, "cache", None) or out.past_key_values

    def reset(self) -> None:
        """Drop the question's keys and values; back to the shared prefix."""
        extra = self.past.get_seq_length() - len(self.ids)
        if extra > 0:
            self.past.crop(-extra)

    def usable(self, inp: list[int]) -> bool:
        n = len(self.ids)
        return self.past is not None and len(inp) > n and inp[:n] == self.ids


@torch.no_grad()
def choice_loglikelihoods(
    model, tokenizer, context: str, choices: list[str], prefix: PrefixCache | None = None
) -> list[float]:
    """Summed log-probabilities of each continuation after ``context`` (one forward per distinct input)."""
    device = next(model.parameters()).device
    limit = _max_length(model)
    scores, cache = [], {}
    for cont in choices:
        ctx_ids, cont_ids = encode_pair(tokenizer, context, cont)
        if not cont_ids:
            raise AletheiaError(f"continuation {cont!r} encodes to no tokens")
        inp = (ctx_ids + cont_ids)[-(limit + 1):][:-1]
        key = tuple(inp)
        if key not in cache:
            keep = len(cont_ids)
            if prefix is not None and prefix.usable(inp) and len(inp) - len(prefix.ids) >= keep:
                n = len(prefix.ids)
                try:
                    logits = model(input_ids=torch.tensor([inp[n:]], device=device), cache=prefix.past,
                                   use_cache=True, logits_to_keep=keep).logits[0]
                finally:
                    prefix.reset()
            else:
                logits = model(input_ids=torch.tensor([inp], device=device), logits_to_keep=keep).logits[0]
            cache[key] = F.log_softmax(logits.float(), dim=-1)
        logp = cache[key][-len(cont_ids):]
        scores.append(float(logp.gather(1, torch.tensor(cont_ids, device=device)[:, None]).sum()))
    return scores


def select_items(data: MMLUData, questions: list[tuple[str, int]]) -> list[dict[str, Any]]:
    items = []
    for subject, index in questions:
        if subject not in data.test or not 0 <= index < len(data.test[subject]):
            raise AletheiaError(f"MMLU question ({subject}, {index}) is not in the data from {data.source}; "
                                "the saved question list belongs to another copy of MMLU")
        items.append(data.test[subject][index])
    return items


def prepare_mmlu(cfg) -> tuple[MMLUData, list[tuple[str, int]], int]:
    """Load the data, choose the questions (saved list or stratified subset) and the shot count."""
    data = load_mmlu(cfg.mmlu_path, cfg.cache_dir, cfg.hub, cfg.pypi)
    questions = read_questions(cfg.mmlu_questions) if cfg.mmlu_questions else stratified_subset(
        data, cfg.mmlu_n, cfg.seed)
    shots = cfg.mmlu_shots if data.dev else 0
    return data, questions, shots


def evaluate_mmlu(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    """Accuracy on the subset, with every item's prediction and the exact settings."""
    data, questions, shots = prepare_mmlu(cfg)
    items = select_items(data, questions)
    records, correct, prefix = [], 0, None
    # no_grad: the prefix cache must not hold a graph; autocast: the precision training computed in
    with torch.no_grad(), mixed_precision(weights_dtype(model), next(model.parameters()).device):
        for item in tqdm(items, desc="MMLU", disable=not progress, leave=False):
            examples = data.dev.get(item["subject"], [])[:shots]
            prompt = build_prompt(item, examples)
            head = prompt[: len(prompt) - len(format_question(item))].rstrip()  # whitespace may merge ahead
            if shots and (prefix is None or prefix.text != head):
                prefix = PrefixCache(model, tokenizer(head)["input_ids"])
                prefix.text = head
            ll = choice_loglikelihoods(model, tokenizer, prompt, [f" {L}" for L in LETTERS], prefix)
            pred = max(range(4), key=lambda i: ll[i])
            correct += pred == item["answer"]
            records.append({"subject": item["subject"], "index": item["index"], "answer": LETTERS[item["answer"]],
                            "prediction": LETTERS[pred], "correct": pred == item["answer"],
                            "loglikelihoods": [round(x, 4) for x in ll]})
    return {
        "accuracy": correct / len(items) if items else None, "n": len(items), "correct": correct,
        "backend": "native", "source": data.source, "shots": shots,
        "shots_note": "from the dev split" if shots else "0-shot (the data has no dev split)",
        "seed": cfg.seed,
        "prompt_format": "lm-eval mmlu: description, question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:",
        "scoring": "log-likelihood of ' A'..' D' (context+continuation tokenised together)",
        "questions": [list(q) for q in questions], "items": records,
    }
