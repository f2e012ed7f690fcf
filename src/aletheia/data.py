"""Training data: reading, validating, prompting, tokenising with response-only labels, batching.

Formats (detected per row):
- Alpaca: ``instruction``, optional ``input``, ``output``;
- chat: ``messages`` = list of ``{"role", "content"}`` ending with an assistant turn;
- plain text: ``text`` (loss on every token).

Prompts use the tokenizer's chat template when it has one, else the Alpaca prompt. Labels are -100
on prompt and padding tokens, so the loss (training, probe and held-out) counts response tokens only.
"""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .bootstrap import generate_bootstrap
from .errors import AletheiaError

IGNORE_INDEX = -100
MAX_EXAMPLE_CHARS = 1_000_000
"""Most characters of text one example (one row) may hold. ``max_length`` keeps a few hundred tokens
of it anyway; a row beyond this is a mistake (a whole corpus in one field, a binary pasted in) that
would otherwise spend gigabytes and minutes in the tokenizer without a word."""
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{extra}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


@dataclass
class Example:
    """One training example: chat ``messages`` (last one the answer) or plain ``text``."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    instruction: str | None = None  # kept for the Alpaca prompt when there is no chat template
    input: str = ""

    @property
    def answer(self) -> str | None:
        return self.messages[-1]["content"] if self.messages else None


def _text_size(value: Any) -> int:
    """Characters of text in a parsed row (strings, nested in lists and mappings)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


def _too_large(where: str, size: int) -> AletheiaError:
    return AletheiaError(f"{where}: the row holds {size:,} characters, over the cap of "
                         f"{MAX_EXAMPLE_CHARS:,} per example (data.MAX_EXAMPLE_CHARS); split or "
                         "trim it (training keeps only max_length tokens of each example anyway)")


def _row_to_example(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise AletheiaError(f"{where}: expected a JSON object, got {type(row).__name__}")
    size = _text_size(row)
    if size > MAX_EXAMPLE_CHARS:
        raise _too_large(where, size)
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise AletheiaError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                m.get("content"), str
            ):
                raise AletheiaError(f"{where}: every message needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise AletheiaError(f"{where}: the last message must have role 'assistant' (the answer)")
        return Example(messages=[{"role": m["role"], "content": m["content"]} for m in msgs])
    if "instruction" in row or "output" in row:
        instr, out, inp = row.get("instruction"), row.get("output"), row.get("input", "") or ""
        if not isinstance(instr, str) or not instr.strip():
            raise AletheiaError(f"{where}: 'instruction' must be a non-empty string")
        if not isinstance(out, str) or not out.strip():
            raise AletheiaError(f"{where}: 'output' must be a non-empty string")
        if not isinstance(inp, str):
            raise AletheiaError(f"{where}: 'input' must be a string")
        user = instr if not inp.strip() else f"{instr}\n\n{inp}"
        return Example(
            messages=[{"role": "user", "content": user}, {"role": "assistant", "content": out}],
            instruction=instr, input=inp,
        )
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise AletheiaError(f"{where}: 'text' must be a non-empty string")
        return Example(text=row["text"])
    raise AletheiaError(
        f"{where}: row has none of the known fields (Alpaca 'instruction'/'output', chat 'messages', "
        f"or 'text'); its keys are {sorted(row)}"
    )


def read_examples(path: str | Path) -> list[Example]:
    """Read a JSON array, JSONL file or HF dataset id into validated examples."""
    p = Path(path).expanduser()
    if not p.exists():
        if isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")) \
                and p.suffix not in (".json", ".jsonl"):
            return _read_hf_dataset(path)
        raise AletheiaError(f"data file not found: {path} (pass an existing .json/.jsonl file to --data)")
    mode = os.stat(p).st_mode  # before opening: a FIFO or a device would block or never end
    if stat.S_ISDIR(mode):
        raise AletheiaError(f"{path} is a folder; pass a .json or .jsonl file to --data")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise AletheiaError(f"{path} is {kind}; pass a regular .json or .jsonl file to --data")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AletheiaError(f"cannot read data file {path} ({exc.strerror or exc})") from None
    rows: list[tuple[str, Any]] = []
    stripped = text.lstrip()
    if p.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AletheiaError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise AletheiaError(f"{p}: expected a JSON array of records")
        rows = [(f"{p}: record {i + 1}", row) for i, row in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > 2 * MAX_EXAMPLE_CHARS:  # surely over the cap: refuse before parsing it
                raise _too_large(f"{p}:{lineno}", len(line))
            try:
                rows.append((f"{p}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise AletheiaError(f"{p}:{lineno}: malformed JSON line ({exc.msg})") from None
    if not rows:
        raise AletheiaError(f"{p}: the dataset is empty; it needs at least 2 examples")
    return [_row_to_example(row, where) for where, row in rows]


def _read_hf_dataset(name: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise AletheiaError(
            f"data '{name}' is not a local file; to load it from the HF hub install 'datasets'"
        ) from None
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # network, missing dataset, auth: one clear line either way
        raise AletheiaError(f"could not load HF dataset '{name}': {str(exc).splitlines()[0]}") from None
    return [_row_to_example(dict(row), f"{name}[{i}]") for i, row in enumerate(ds)]


def load_examples(path: str | None, bootstrap_size: int = 600) -> list[Example]:
    """The user's data, or the generated bootstrap instruction set when ``path`` is None."""
    if path is None:
        return [_row_to_example(r, "bootstrap") for r in generate_bootstrap(bootstrap_size, seed=0)]
    return read_examples(path)


def split_examples(
    examples: list[Example], eval_fraction: float, max_eval: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic train / held-out split from ``seed``."""
    if len(examples) < 2:
        raise AletheiaError(f"the dataset has {len(examples)} example(s); it needs at least 2")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, round(eval_fraction * len(examples))), len(examples) - 1)
    held = [examples[i] for i in sorted(order[:n_eval])]
    train = [examples[i] for i in sorted(order[n_eval:])]
    return train, held


# --- prompting and tokenisation ------------------------------------------------------------------

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, example: Example) -> str:
    """The text the model sees before its answer (chat template, else Alpaca prompt)."""
    assert example.messages is not None
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            example.messages[:-1], add_generation_prompt=True, tokenize=False
        )
    bos = tokenizer.bos_token or ""
    if example.instruction is not None:
        block = f"### Input:\n{example.input}\n\n" if example.input.strip() else ""
        extra = ", paired with an input that provides further context" if block else ""
        return bos + ALPACA_PROMPT.format(extra=extra, instruction=example.instruction, input_block=block)
    turns = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in example.messages[:-1])
    return bos + turns + "### Assistant:\n"


def _response_text(tokenizer, example: Example, prompt: str) -> str:
    if has_chat_template(tokenizer):
        full = tokenizer.apply_chat_template(example.messages, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt):]
    return example.messages[-1]["content"] + (tokenizer.eos_token or "")


def tokenize_example(tokenizer, example: Example, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels (-100 on the prompt) for one example, truncated to ``max_length``."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    prompt = prompt_text(tokenizer, example)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(_response_text(tokenizer, example, prompt), add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(r_ids) > max_length:  # keep some answer; cut the prompt from the left
        r_ids = r_ids[: max(max_length - len(p_ids), max_length // 4)]
        p_ids = p_ids[len(p_ids) - (max_length - len(r_ids)):]
    return {"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids}


def tokenize_examples(tokenizer, examples: list[Example], max_length: int) -> list[dict[str, list[int]]]:
    out = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    return [t for t in out if any(label != IGNORE_INDEX for label in t["labels"][1:])]


def collate(items: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; padding gets attention 0 and label -100."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = torch.tensor(it["input_ids"])
        labels[row, :n] = torch.tensor(it["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def probe_batches(
    items: list[dict[str, list[int]]], n_batches: int, batch_size: int, seed: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` batches drawn with ``seed`` (without replacement while examples last)."""
    r = random.Random(seed)
    order: list[int] = []
    while len(order) < n_batches * batch_size:
        chunk = list(range(len(items)))
        r.shuffle(chunk)
        order += chunk
    return [
        collate([items[i] for i in order[b * batch_size:(b + 1) * batch_size]], pad_id)
        for b in range(n_batches)
    ]


def train_batches(
    items: list[dict[str, list[int]]], batch_size: int, seed: int, pad_id: int, skip: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of shuffled batches (reshuffled each epoch, deterministic from ``seed``).

    ``skip``: start after that many batches, exactly where a stream stopped (resume), without
    building the skipped ones."""
    if not items:
        raise AletheiaError("no training example has a response token left after tokenisation")
    r = random.Random(seed)
    while True:
        order = list(range(len(items)))
        r.shuffle(order)
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            if skip:
                skip -= 1
                continue
            yield collate([items[i] for i in order[start:start + batch_size]], pad_id)


def eval_batches(
    items: list[dict[str, list[int]]], batch_size: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    return [collate(items[i:i + batch_size], pad_id) for i in range(0, len(items), batch_size)]
