"""Training data as tokens: prompting, tokenising with response-only labels, batching.

Examples come from ``examples.py``. Prompts use the tokenizer's chat template (or
``data.chat_template``) when there is one, else the Alpaca prompt. Labels are -100 on prompt and
padding tokens, so the loss (training, probe and held-out) counts response tokens only: every
assistant turn of a chat (``train_on="all_assistant"``) or the last one (``"last_assistant"``).
"""

from __future__ import annotations

import random
import re
from typing import Iterator

import torch

from .errors import AletheiaError
from .examples import Example

IGNORE_INDEX = -100
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{extra}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


ALL_ASSISTANT, LAST_ASSISTANT = "all_assistant", "last_assistant"
TRAIN_ON = (ALL_ASSISTANT, LAST_ASSISTANT)

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


def _cut(seq, spans: list[tuple[int, int]]) -> list:
    """``seq`` (text or token ids) in pieces: each span (trained) and what lies between (not), empty
    pieces left out."""
    pieces, pos = [], 0
    for a, b in spans:
        pieces += [(seq[pos:a], False), (seq[a:b], True)]
        pos = b
    pieces.append((seq[pos:], False))
    return [(piece, trained) for piece, trained in pieces if piece]


def _template_pieces(tokenizer, example: Example, turns: list[int]) -> list[tuple[str, bool]]:
    """The rendered chat cut at the trained answers, found by rendering it prefix by prefix: the
    answer to turn i is what ``messages[:i+1]`` adds to ``messages[:i]`` plus the generation prompt."""
    msgs, last = example.messages, len(example.messages) - 1
    full = _render(tokenizer, msgs)
    spans, pos = [], 0
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
        spans.append((start, end))
        pos = end
    return _cut(full, spans)


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
    return _cut(ids, runs[-1:] if len(turns) == 1 else runs)


def example_pieces(tokenizer, example: Example, train_on: str = ALL_ASSISTANT) -> list[tuple[list[int], bool]]:
    """The token ids of a chat example in pieces, each marked whether its tokens carry labels."""
    turns = _trained_turns(example.messages, train_on)
    if _uses_alpaca_prompt(tokenizer, example):
        texts = [(prompt_text(tokenizer, example), False), (example.answer + (tokenizer.eos_token or ""), True)]
    elif not has_chat_template(tokenizer):
        full, spans = _plain_chat(tokenizer, example.messages)
        texts = _cut(full, [spans[-1]] if len(turns) == 1 else spans)
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
    # no answer (an empty one: nothing to learn, dropped by tokenize_examples), or several and a
    # label within max_length: keep the start
    if not trained or (len(trained) > 1 and any(label != IGNORE_INDEX for label in labels[1:max_length])):
        return {"input_ids": ids[:max_length], "labels": labels[:max_length]}
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
