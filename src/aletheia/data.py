"""Training data: reading, validating, prompting, tokenising with response-only labels, batching.

Sources (``read_examples``): JSON arrays and JSONL files (read here, line by line, so a bad row is
named by its line), Parquet and CSV files, folders of them (split by file name as ``load_dataset``
does), folders written by ``save_to_disk`` and HF hub datasets (``data_sources.py``). ``data.columns``
renames a dataset's columns to the fields below.

Formats (detected per row):
- Alpaca: ``instruction``, optional ``input`` and ``system``, ``output``;
- chat: ``messages`` = list of ``{"role", "content"}`` ending with an assistant turn;
- ShareGPT: ``conversations`` = list of ``{"from", "value"}`` (roles human/gpt/system);
- plain text: ``text`` (loss on every token).

Prompts use the tokenizer's chat template (or ``data.chat_template``) when there is one, else the
Alpaca prompt. Labels are -100 on prompt and padding tokens, so the loss (training, probe and held-out)
counts response tokens only: every assistant turn of a chat (``train_on="all_assistant"``) or the
last one (``"last_assistant"``).
"""

from __future__ import annotations

import json
import os
import random
import re
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


ALL_ASSISTANT, LAST_ASSISTANT = "all_assistant", "last_assistant"
TRAIN_ON = (ALL_ASSISTANT, LAST_ASSISTANT)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}
"""ShareGPT speaker names (``from``) and the chat roles they stand for."""


@dataclass
class Example:
    """One training example: chat ``messages`` (last one the answer) or plain ``text``."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    instruction: str | None = None  # kept for the Alpaca prompt when there is no chat template
    input: str = ""
    where: str = ""  # the file and row it came from, for messages

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


def _as_text(value: Any) -> Any:
    """A number where text belongs (a CSV or Parquet answer column of numbers) is its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _chat_turns(turns: Any, key: str, where: str) -> list[dict[str, str]]:
    """``messages`` ({role, content}) or ShareGPT ``conversations`` ({from, value}) as chat messages."""
    if not isinstance(turns, list) or not turns:
        what = "{role, content}" if key == "messages" else "{from, value}"
        raise AletheiaError(f"{where}: '{key}' must be a non-empty list of {what}")
    out = []
    for n, m in enumerate(turns, start=1):
        if key == "messages":
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                _as_text(m.get("content")), str
            ):
                raise AletheiaError(f"{where}: every message needs string 'role' and 'content'")
            out.append({"role": m["role"], "content": _as_text(m["content"])})
            continue
        m = m if isinstance(m, dict) else {}
        speaker, value = m.get("from", m.get("role")), _as_text(m.get("value", m.get("content")))
        if not isinstance(speaker, str) or not isinstance(value, str):
            raise AletheiaError(f"{where}: turn {n} of 'conversations' needs string 'from' and 'value'")
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise AletheiaError(f"{where}: turn {n} of 'conversations' is from {speaker!r}; ShareGPT speakers "
                                f"are {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": value})
    if out[-1]["role"] != "assistant":
        raise AletheiaError(f"{where}: the last message must have role 'assistant' (the answer)")
    return out


def _row_to_example(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise AletheiaError(f"{where}: expected a JSON object, got {type(row).__name__}")
    size = _text_size(row)
    if size > MAX_EXAMPLE_CHARS:
        raise _too_large(where, size)
    system = _as_text(row.get("system")) or ""
    if not isinstance(system, str):
        raise AletheiaError(f"{where}: 'system' must be a string")
    system_turn = [{"role": "system", "content": system}] if system.strip() else []
    for key in ("messages", "conversations"):
        if key in row:
            msgs = _chat_turns(row[key], key, where)
            if msgs[0]["role"] == "system":
                system_turn = []
            return Example(messages=system_turn + msgs, where=where)
    if "instruction" in row or "output" in row:
        instr, out = _as_text(row.get("instruction")), _as_text(row.get("output"))
        inp = _as_text(row.get("input", "")) or ""
        if not isinstance(instr, str) or not instr.strip():
            raise AletheiaError(f"{where}: 'instruction' must be a non-empty string")
        if not isinstance(out, str) or not out.strip():
            raise AletheiaError(f"{where}: 'output' must be a non-empty string")
        if not isinstance(inp, str):
            raise AletheiaError(f"{where}: 'input' must be a string")
        user = instr if not inp.strip() else f"{instr}\n\n{inp}"
        return Example(
            messages=system_turn + [{"role": "user", "content": user}, {"role": "assistant", "content": out}],
            instruction=instr, input=inp, where=where,
        )
    if "text" in row:
        text = _as_text(row["text"])
        if not isinstance(text, str) or not text.strip():
            raise AletheiaError(f"{where}: 'text' must be a non-empty string")
        return Example(text=text, where=where)
    raise AletheiaError(
        f"{where}: row has none of the known fields (Alpaca 'instruction'/'output', chat 'messages', "
        f"ShareGPT 'conversations', or 'text'); its keys are {sorted(row)} (map yours with data.columns, "
        "e.g. --data-columns instruction=question,output=answer)"
    )


def read_examples(path: str | Path, columns: dict[str, str] | None = None, split: str = "train",
                  subset: str | None = None) -> list[Example]:
    """Read a data file, a folder of them, a saved dataset or an HF hub dataset into validated examples.

    ``columns``: our field -> the dataset's column (``{"instruction": "question"}``). ``split`` and
    ``subset`` (the dataset's configuration) choose what a folder or hub dataset holds; a single file
    is one split, read whole."""
    found, rows = _source_rows(path, split, subset)
    if columns:
        rows = _renamed(rows, columns, str(path), found)
    examples = [_row_to_example(row, where) for where, row in rows]
    if not examples:
        raise AletheiaError(f"{Path(path).expanduser()}: the dataset is empty; it needs at least 2 examples")
    return examples


def _looks_like_hub_id(path: str | Path) -> bool:
    from .data_sources import DATA_SUFFIXES

    return isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")) \
        and Path(path).suffix.lower() not in DATA_SUFFIXES


def _source_rows(path: str | Path, split: str, subset: str | None) -> tuple[list[str], Iterator]:
    """The column names and ``(where, row)`` pairs of whatever ``path`` is."""
    from . import data_sources as sources

    p = Path(path).expanduser()
    if not p.exists():
        if _looks_like_hub_id(path):
            return sources.hub_dataset(str(path), subset, split)
        raise AletheiaError(f"data file not found: {path} (pass an existing .json/.jsonl/.parquet/.csv file, "
                            "a folder of them or an HF dataset id to --data)")
    mode = os.stat(p).st_mode  # before opening: a FIFO or a device would block or never end
    if stat.S_ISDIR(mode):
        if sources.is_saved_dataset(p):
            return sources.saved_dataset(p, split)
        if subset is not None or _declares_configs(p):  # a dataset repository: its README says how to load it
            return sources.hub_dataset(str(p), subset, split)
        files = sources.data_files(p, split)
        found, parts = [], []
        for f in files:
            cols, rows = _file_rows(f)
            found += [c for c in cols if c not in found]
            parts.append(rows)
        return found, (pair for rows in parts for pair in rows)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise AletheiaError(f"{path} is {kind}; pass a regular .json or .jsonl file to --data")
    if split != "train":
        raise AletheiaError(f"data.split '{split}': {path} is a single file, read whole; data.split chooses "
                            "a split of a folder or a hub dataset (pass the file of the split you want)")
    return _file_rows(p)


def _declares_configs(folder: Path) -> bool:
    """Whether the folder's README.md names dataset configurations (as a hub dataset repository does)."""
    readme = folder / "README.md"
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:65536] if readme.is_file() else ""
    except OSError:
        return False
    return head.startswith("---") and "\nconfigs:" in head.split("\n---", 1)[0]


def _file_rows(p: Path) -> tuple[list[str], Iterator]:
    from .data_sources import TABLE_SUFFIXES, table_file

    if p.suffix.lower() in TABLE_SUFFIXES:
        return table_file(p)
    rows = _json_rows(p)
    found: list[str] = []
    for _, row in rows:
        if isinstance(row, dict):
            found += [k for k in row if k not in found]
    return found, iter(rows)


def _json_rows(p: Path) -> list[tuple[str, Any]]:
    """A JSON array (or one object) or JSONL file, each row named by its record or line number."""
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AletheiaError(f"cannot read data file {p} ({exc.strerror or exc})") from None
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
    return rows


def _renamed(rows: Iterator, columns: dict[str, str], source: str, found: list[str]) -> Iterator:
    """Rows with the dataset's columns renamed to our fields; a column that is not there is refused
    up front, naming the columns that are."""
    missing = [f"'{col}' (for {ours})" for ours, col in columns.items() if col not in found]
    if missing:
        raise AletheiaError(f"data.columns: {source} has no column {', '.join(missing)}; its columns are "
                            f"{', '.join(found) or 'none'}")
    taken = set(columns) | set(columns.values())
    for where, row in rows:
        if isinstance(row, dict):  # a column named like a field it does not map to is dropped
            row = {k: v for k, v in row.items() if k not in taken} | {
                ours: row[col] for ours, col in columns.items() if col in row}
        yield where, row


def load_examples(data: Any = None, bootstrap_size: int = 600) -> list[Example]:
    """The user's data, or the generated bootstrap instruction set when there is none.

    ``data``: a ``DataConfig`` (its path, columns, split and subset), a path or hub id, or None."""
    if data is not None and not isinstance(data, (str, Path)):  # a DataConfig
        if data.path is None:
            return load_examples(None, data.bootstrap_size)
        return read_examples(data.path, data.columns, data.split, data.subset)
    if data is None:
        return [_row_to_example(r, "bootstrap") for r in generate_bootstrap(bootstrap_size, seed=0)]
    return read_examples(data)


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


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _plain_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """A chat without a chat template (``### Role:`` blocks, each answer ended by EOS) and the
    character span of each assistant answer in it."""
    text, spans, eos = tokenizer.bos_token or "", [], tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        text += f"### {m['role'].capitalize()}:\n"
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(m["content"]) + len(eos)))
            text += m["content"] + eos
        else:
            text += m["content"]
        text += "\n\n" if i < len(messages) - 1 else ""
    return text, spans


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The text the model sees before its next answer to ``messages`` (which end with a user turn)."""
    if has_chat_template(tokenizer):
        return _render(tokenizer, messages, generation_prompt=True)
    text, _ = _plain_chat(tokenizer, messages)
    return text + ("\n\n" if messages else "") + "### Assistant:\n"


def _alpaca_prompt(tokenizer, instruction: str, input: str = "") -> str:
    block = f"### Input:\n{input}\n\n" if input.strip() else ""
    extra = ", paired with an input that provides further context" if block else ""
    return (tokenizer.bos_token or "") + ALPACA_PROMPT.format(extra=extra, instruction=instruction,
                                                               input_block=block)


def _uses_alpaca_prompt(tokenizer, example: Example) -> bool:
    return not has_chat_template(tokenizer) and example.instruction is not None and len(example.messages) == 2


def prompt_text(tokenizer, example: Example) -> str:
    """The text the model sees before its answer (chat template, else Alpaca prompt)."""
    assert example.messages is not None
    if _uses_alpaca_prompt(tokenizer, example):
        return _alpaca_prompt(tokenizer, example.instruction, example.input)
    return chat_prompt(tokenizer, example.messages[:-1])


def _trained_turns(messages: list[dict[str, str]], train_on: str) -> list[int]:
    last = len(messages) - 1
    return [i for i, m in enumerate(messages)
            if m["role"] == "assistant" and (train_on == ALL_ASSISTANT or i == last)]


def _template_pieces(tokenizer, example: Example, turns: list[int]) -> list[tuple[str, bool]]:
    """The rendered chat cut at the trained answers, found by rendering it prefix by prefix: the
    answer to turn i is what ``messages[:i+1]`` adds to ``messages[:i]`` plus the generation prompt."""
    msgs, last = example.messages, len(example.messages) - 1
    full = _render(tokenizer, msgs)
    pieces, pos = [], 0
    for i in turns:
        prompt = _render(tokenizer, msgs[:i], generation_prompt=True)
        upto = full if i == last else _render(tokenizer, msgs[:i + 1])
        if full.startswith(prompt) and full.startswith(upto) and pos <= len(prompt) <= len(upto):
            start, end = len(prompt), len(upto)
        elif len(turns) == 1 and i == last:  # a template whose prompt is no prefix: the answer and EOS
            return [(prompt, False), (msgs[i]["content"] + (tokenizer.eos_token or ""), True)]
        else:  # a template that renders a turn otherwise once more follow: the answer's own text
            start = full.find(msgs[i]["content"], pos)
            if start < 0:
                raise AletheiaError(f"{example.where or 'a chat'}: the chat template does not show assistant "
                                    f"turn {i + 1} as written, so its tokens cannot be labelled; use "
                                    "data.train_on last_assistant or another data.chat_template")
            end = start + len(msgs[i]["content"])
        pieces += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    pieces.append((full[pos:], False))
    return [(text, trained) for text, trained in pieces if text]


def _generation_tagged(tokenizer) -> bool:
    """Whether the template marks answers with ``{% generation %}`` (and the tokenizer can map them)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and getattr(tokenizer, "is_fast", False) and \
        re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def _masked_pieces(tokenizer, example: Example, turns: list[int]) -> list[tuple[list[int], bool]] | None:
    """Token pieces from transformers' assistant-token mask (``{% generation %}`` templates)."""
    enc = tokenizer.apply_chat_template(example.messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    runs, start = [], None
    for k, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k))
            start = None
    if len(runs) != sum(m["role"] == "assistant" for m in example.messages):
        return None  # an empty answer, or a template that tags only some turns: render prefix by prefix
    if len(turns) == 1:
        runs = runs[-1:]
    pieces, pos = [], 0
    for a, b in runs:
        pieces += [(ids[pos:a], False), (ids[a:b], True)]
        pos = b
    pieces.append((ids[pos:], False))
    return [(piece, trained) for piece, trained in pieces if piece]


def example_pieces(tokenizer, example: Example, train_on: str = ALL_ASSISTANT) -> list[tuple[list[int], bool]]:
    """The token ids of a chat example in pieces, each marked whether its tokens carry labels."""
    turns = _trained_turns(example.messages, train_on)
    if _uses_alpaca_prompt(tokenizer, example):
        texts = [(prompt_text(tokenizer, example), False), (example.answer + (tokenizer.eos_token or ""), True)]
    elif not has_chat_template(tokenizer):
        full, spans = _plain_chat(tokenizer, example.messages)
        spans = [spans[-1]] if len(turns) == 1 else spans
        texts, pos = [], 0
        for a, b in spans:
            texts += [(full[pos:a], False), (full[a:b], True)]
            pos = b
        texts = [(text, trained) for text, trained in texts if text]
    else:
        masked = _masked_pieces(tokenizer, example, turns) if _generation_tagged(tokenizer) else None
        if masked is not None:
            return masked
        texts = _template_pieces(tokenizer, example, turns)
    # each piece on its own, as the prompt and the answer always were: the labels fall on whole tokens
    return [(tokenizer(text, add_special_tokens=False)["input_ids"], trained) for text, trained in texts]


def _fit(pieces: list[tuple[list[int], bool]], max_length: int) -> dict[str, list[int]]:
    """Ids and labels of the pieces within ``max_length`` tokens. One answer: keep some of it and cut
    the prompt from the left. Several: keep the start; if no answer token is left, the first exchange
    alone is cut as one answer."""
    ids = [t for piece, _ in pieces for t in piece]
    labels = [t if trained else IGNORE_INDEX for piece, trained in pieces for t in piece]
    if len(ids) <= max_length:
        return {"input_ids": ids, "labels": labels}
    trained = [k for k, (_, is_trained) in enumerate(pieces) if is_trained]
    if not trained:  # an empty answer: nothing to learn, dropped by tokenize_examples
        return {"input_ids": ids[:max_length], "labels": labels[:max_length]}
    if len(trained) > 1:
        if any(label != IGNORE_INDEX for label in labels[1:max_length]):
            return {"input_ids": ids[:max_length], "labels": labels[:max_length]}
        trained = trained[:1]
    k = trained[0]
    p_ids, r_ids = [t for piece, _ in pieces[:k] for t in piece], pieces[k][0]
    if len(p_ids) + len(r_ids) > max_length:  # keep some answer; cut the prompt from the left
        r_ids = r_ids[: max(max_length - len(p_ids), max_length // 4)]
        p_ids = p_ids[len(p_ids) - (max_length - len(r_ids)):]
    return {"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids}


def tokenize_example(tokenizer, example: Example, max_length: int,
                     train_on: str = ALL_ASSISTANT) -> dict[str, list[int]]:
    """Token ids and labels (-100 on the prompt) for one example, truncated to ``max_length``.

    ``train_on``: label every assistant turn of a chat (``all_assistant``) or the last one."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    if train_on not in TRAIN_ON:
        raise AletheiaError(f"train_on={train_on!r} is unknown; use one of {', '.join(TRAIN_ON)}")
    return _fit(example_pieces(tokenizer, example, train_on), max_length)


def tokenize_examples(tokenizer, examples: list[Example], max_length: int,
                      train_on: str = ALL_ASSISTANT) -> list[dict[str, list[int]]]:
    out = [tokenize_example(tokenizer, ex, max_length, train_on) for ex in examples]
    return [t for t in out if any(label != IGNORE_INDEX for label in t["labels"][1:])]


def batches_per_epoch(n_items: int, batch_size: int) -> int:
    """Micro-batches in one pass over ``n_items`` examples, as ``train_batches`` draws them (whole
    batches only; one batch of everything when there are fewer examples than a batch)."""
    return n_items // batch_size if n_items >= batch_size else 1


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
