"""GSM8K: a seeded subset answered greedily, scored by strict match and by the last number.

``strict_match`` accepts only the answer in the requested form (``#### N`` or ``The answer is N``);
``flexible_extract`` takes the last number in the completion. Both normalise the same way
(commas, ``$`` and a trailing period removed; 18.0 equals 18).
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..data import has_chat_template
from .generation import generate_greedy
from .sources import GSM8KData, load_gsm8k, strip_calculator

N_SHOTS = 8
FEWSHOT_STOPS = ["Question:", "</s>", "<|im_end|>", "\n\n\n"]
CHAT_INSTRUCTION = ("Solve the math problem step by step. Finish with a final line of the form "
                    "\"The answer is N.\" where N is the number.\n\n")
STRICT = [re.compile(r"#### *(-?[$0-9.,]+)"), re.compile(r"[Tt]he (?:final )?answer is:? *\$?(-?[0-9.,]+)")]
NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def normalize_number(text: str | None) -> str | None:
    """``$1,234.`` -> ``1234``; ``18.00`` -> ``18``; None when no number is left."""
    if text is None:
        return None
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text or None
    return str(int(value)) if value.is_integer() else repr(value)


def strict_answer(completion: str) -> str | None:
    for pattern in STRICT:
        found = pattern.findall(completion)
        if found:
            return normalize_number(found[0])
    return None


def flexible_answer(completion: str) -> str | None:
    found = NUMBER.findall(completion)
    return normalize_number(found[-1]) if found else None


def subset(data: GSM8KData, n: int, seed: int) -> list[int]:
    """Indices of the seeded subset (sorted); all questions when ``n`` is 0 or too large."""
    if n <= 0 or n >= len(data.test):
        return list(range(len(data.test)))
    return sorted(random.Random(seed).sample(range(len(data.test)), n))


def resolve_format(fmt: str, tokenizer) -> str:
    if fmt == "auto":
        return "chat-0shot" if has_chat_template(tokenizer) else "8shot"
    return fmt


def fewshot_examples(data: GSM8KData, chosen: list[int]) -> tuple[list[dict[str, Any]], str]:
    """The first 8 train problems; without a train split, the first 8 test problems not evaluated."""
    if len(data.train) >= N_SHOTS:
        return data.train[:N_SHOTS], "first 8 problems of the train split"
    taken = set(chosen)
    rest = [r for r in data.test if r["index"] not in taken][:N_SHOTS]
    return rest, "first 8 test problems outside the evaluated subset (no train split)"


def build_prompts(data: GSM8KData, items: list[dict[str, Any]], fmt: str, tokenizer,
                  shots: list[dict[str, Any]]) -> list[str]:
    if fmt == "chat-0shot":
        return [tokenizer.apply_chat_template([{"role": "user", "content": CHAT_INSTRUCTION + it["question"]}],
                                              add_generation_prompt=True, tokenize=False) for it in items]
    head = "".join(f"Question: {s['question']}\nAnswer: {strip_calculator(s['solution'])}\n\n" for s in shots)
    return [f"{head}Question: {it['question']}\nAnswer:" for it in items]


def evaluate_gsm8k(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    data = load_gsm8k(cfg.gsm8k_path, cfg.cache_dir, cfg.hub, cfg.pypi)
    chosen = subset(data, cfg.gsm8k_n, cfg.seed)
    items = [data.test[i] for i in chosen]
    fmt = resolve_format(cfg.gsm8k_format, tokenizer)
    shots, shots_note = fewshot_examples(data, chosen) if fmt == "8shot" else ([], "zero-shot")
    prompts = build_prompts(data, items, fmt, tokenizer, shots)
    stops = FEWSHOT_STOPS if fmt == "8shot" else ["<|im_end|>", "</s>"]
    completions = generate_greedy(model, tokenizer, prompts, cfg.gsm8k_max_new_tokens, stops, cfg.batch_size,
                                  add_special_tokens=fmt == "8shot", progress=progress, desc="GSM8K")
    records, strict, flexible = [], 0, 0
    for it, completion in zip(items, completions):
        s, f = strict_answer(completion), flexible_answer(completion)
        target = normalize_number(it["target"])
        strict += s == target
        flexible += f == target
        records.append({"index": it["index"], "target": target, "strict": s, "flexible": f,
                        "strict_correct": s == target, "flexible_correct": f == target,
                        "completion": completion})
    n = len(items)
    return {
        "strict_match": strict / n if n else None, "flexible_extract": flexible / n if n else None, "n": n,
        "backend": "native", "source": data.source, "seed": cfg.seed, "prompt_format": fmt,
        "shots": len(shots), "shots_note": shots_note,
        "decoding": {"greedy": True, "max_new_tokens": cfg.gsm8k_max_new_tokens, "stop": stops},
        "questions": chosen, "items": records,
    }
