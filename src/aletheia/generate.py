"""``aletheia generate``: try a trained model from the command line.

What loads: a run folder (or one run of a compare folder) is its base, as ``adapter_config.json``
names it, with the adapter on top; anything else (an exported folder, a hub id, an embedded model
name, a ``.gguf`` file) loads as a plain model. The prompt is built as training built it: the
tokenizer's chat template (a run folder's tokenizer carries the one training used), else the Alpaca
prompt. Tokens stream to stdout as they are made (transformers' ``TextStreamer``). Greedy unless a
temperature is given. ``compare`` answers each prompt twice from one load of the weights: the base
inside PEFT's ``disable_adapter()``, then with the adapter.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .data import prompt_text
from .errors import AletheiaError
from .examples import Example
from .utils import resolve_device, set_seed

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""End-of-turn tokens of common chat templates: generation stops at them too, as at EOS."""


@dataclass
class Sampling:
    """How each answer is drawn: greedy (temperature 0) or sampled."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> "Sampling":
        if self.max_new_tokens < 1:
            raise AletheiaError(f"--max-new-tokens {self.max_new_tokens} must be at least 1")
        if not self.temperature >= 0:
            raise AletheiaError(f"--temperature {self.temperature} must be >= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            raise AletheiaError(f"--top-p {self.top_p} must be in (0, 1]")
        return self


def is_run_folder(path: Path) -> bool:
    """A folder written by ``aletheia train`` or ``compare`` (finished or not)."""
    return path.is_dir() and any((path / name).exists() for name in
                                 ("run_state.json", "summary.json", ".partial", "standard", "aletheia"))


def load_for_generation(target: str, method: str | None = None, device: str | None = None):
    """``(model, tokenizer, adapter)``: ``adapter`` is the adapter folder loaded on top, or None."""
    from .models import load_model_and_tokenizer

    dev = resolve_device(device)
    path = Path(target).expanduser()
    if is_run_folder(path) or (path / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoTokenizer

        from .export import base_model_of, resolve_run

        run = resolve_run(path, method) if is_run_folder(path) else path  # else a plain PEFT adapter
        model, tokenizer = load_model_and_tokenizer(base_model_of(run), device=dev)
        if (run / "tokenizer_config.json").is_file():  # the tokenizer (and chat template) it trained with
            tokenizer = AutoTokenizer.from_pretrained(run)
        model = PeftModel.from_pretrained(model, str(run))
        adapter = run
    else:
        if method is not None:
            raise AletheiaError(f"--method {method} chooses a run of a compare folder; {target} is not one")
        model, tokenizer = load_model_and_tokenizer(target, device=dev)
        adapter = None
    model.eval()
    return model, tokenizer, adapter


def build_prompt(tokenizer, history: list[dict[str, str]]) -> str:
    """The text before the next answer to ``history`` (ending with the user's turn), as training
    rendered it: a single instruction without a chat template gets the Alpaca prompt."""
    first = len(history) == 1 and history[0]["role"] == "user"
    example = Example(messages=[*history, {"role": "assistant", "content": ""}],
                      instruction=history[0]["content"] if first else None)
    return prompt_text(tokenizer, example)


def _stop_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    return sorted(set(ids))


@torch.no_grad()
def answer(model, tokenizer, history: list[dict[str, str]], sampling: Sampling, stream: bool = True) -> str:
    """Generate the next assistant turn for ``history``, streaming it to stdout."""
    from transformers import TextStreamer

    enc = tokenizer(build_prompt(tokenizer, history), return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    if sampling.seed is not None:
        set_seed(sampling.seed)
    sample = sampling.temperature > 0
    options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p} if sample \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    out = model.generate(**enc, max_new_tokens=sampling.max_new_tokens, use_cache=True, streamer=streamer,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=_stop_ids(model, tokenizer),
                         **options)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run_generate(target: str, prompt: str | None = None, interactive: bool = False, compare: bool = False,
                 method: str | None = None, device: str | None = None, system: str | None = None,
                 sampling: Sampling | None = None, read: Callable[[str], str] = input) -> list[dict]:
    """``aletheia generate``: answer ``prompt`` (and then, with ``interactive``, each line typed).

    ``compare``: the base model's answer too (a run folder only). Returns one record per turn:
    ``{"prompt", "answer"}``, plus ``"base"`` with ``compare``."""
    sampling = (sampling or Sampling()).check()
    if not prompt and not interactive:
        raise AletheiaError("nothing to answer: give --prompt TEXT, or -i for a chat")
    model, tokenizer, adapter = load_for_generation(target, method, device)
    if compare and adapter is None:
        raise AletheiaError(f"--compare shows base vs adapter, and {target} is a plain model; pass a run folder")
    sides = {"base": model.disable_adapter, "answer": nullcontext} if compare else {"answer": nullcontext}
    label = {"base": "base model", "answer": f"with adapter {adapter}" if adapter else str(target)}
    start = [{"role": "system", "content": system}] if system else []
    histories = {side: list(start) for side in sides}
    turns: list[dict] = []
    if interactive:
        print("chat: type a message; 'exit' or Ctrl-D ends it, '/reset' forgets the conversation",
              file=sys.stderr)
    while True:
        if prompt is None:
            try:
                prompt = read("you> ").strip()
            except EOFError:
                break
            if prompt in ("exit", "quit", "/exit"):
                break
            if not prompt:
                prompt = None
                continue
            if prompt == "/reset":
                histories, prompt = {side: list(start) for side in sides}, None
                continue
        turn = {"prompt": prompt}
        for side, context in sides.items():
            histories[side].append({"role": "user", "content": prompt})
            if compare:
                print(f"--- {label[side]} ---", flush=True)
            with context():
                turn[side] = answer(model, tokenizer, histories[side], sampling)
            histories[side].append({"role": "assistant", "content": turn[side]})
        turns.append(turn)
        prompt = None
        if not interactive:
            break
    return turns
