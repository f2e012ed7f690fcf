"""``aletheia generate``: a run folder (base + adapter), an exported model, a chat loop, base vs adapter."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import alpaca_records, run_cli, save_tiny_model

from aletheia.chat_templates import CHAT_TEMPLATES
from aletheia.data import prompt_text
from aletheia.examples import Example
from aletheia.generate import Sampling, build_prompt, load_for_generation, run_generate

PROMPT = "Add 3 and 4."
FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run (chatml template, a high learning rate so the adapter matters) and its export."""
    from aletheia.cli import main

    root = tmp_path_factory.mktemp("gen")
    model = save_tiny_model(root / "tiny")
    data = root / "train.json"
    data.write_text(json.dumps(alpaca_records(24)))
    for argv in (["train", "--method", "standard", "--model", str(model), "--data", str(data), "--steps", "4",
                  "--lr", "3e-2", "--data.chat_template", "chatml", "-o", str(root / "run"), *FAST],
                 ["export", str(root / "run"), "-o", str(root / "exported")]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None)
    return {"base": model, "run": root / "run", "exported": root / "exported"}


def greedy(model, tokenizer, prompt: str, n: int = 8) -> str:
    """What greedy decoding of ``prompt`` gives, computed here without the generate module."""
    text = prompt_text(tokenizer, Example(messages=[{"role": "user", "content": prompt},
                                                    {"role": "assistant", "content": ""}], instruction=prompt))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_a_run_folder_answers_with_its_adapter_and_its_chat_template(trained, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, err = run_cli(["generate", str(trained["run"]), "--prompt", PROMPT, "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(trained["run"])
    assert tok.chat_template == CHAT_TEMPLATES["chatml"]  # the template it trained with came along
    assert build_prompt(tok, [{"role": "user", "content": PROMPT}]) == (
        f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained["base"]), str(trained["run"]))
    expected = greedy(peft_model.eval(), tok, PROMPT)
    assert expected and out.strip() == expected  # streamed to stdout, token by token


def test_compare_prints_the_base_answer_then_the_adapter_answer(trained, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    turns = run_generate(str(trained["run"]), PROMPT, compare=True, sampling=Sampling(max_new_tokens=8))
    out = capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(trained["run"])
    base = greedy(AutoModelForCausalLM.from_pretrained(trained["base"]).eval(), tok, PROMPT)
    assert turns[0]["base"] == base and turns[0]["answer"] != base  # the adapter changes the answer
    assert out.index("--- base model ---") < out.index(base) < out.index(f"--- with adapter {trained['run']}")


def test_an_exported_model_answers_as_the_run_did(trained, capsys):
    from_run = run_generate(str(trained["run"]), PROMPT, sampling=Sampling(max_new_tokens=8))
    exported = run_generate(str(trained["exported"]), PROMPT, sampling=Sampling(max_new_tokens=8))
    assert exported == from_run  # merged weights, the same greedy tokens
    _, tokenizer, adapter = load_for_generation(str(trained["exported"]))
    assert adapter is None and tokenizer.chat_template == CHAT_TEMPLATES["chatml"]


def test_interactive_chat_keeps_the_conversation_until_reset(trained, capsys, monkeypatch):
    seen = []
    import aletheia.generate as gen

    real = gen.build_prompt
    monkeypatch.setattr(gen, "build_prompt", lambda tok, history: seen.append(list(history)) or real(tok, history))
    lines = iter(["hi", "", "more", "/reset", "again"])

    def read(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    turns = run_generate(str(trained["exported"]), interactive=True, read=read, sampling=Sampling(max_new_tokens=4))
    assert [t["prompt"] for t in turns] == ["hi", "more", "again"]
    assert [[m["content"] for m in h] for h in seen] == [["hi"], ["hi", turns[0]["answer"], "more"], ["again"]]


def test_sampling_is_seeded(trained, capsys):
    hot = Sampling(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=3)
    first = run_generate(str(trained["exported"]), PROMPT, sampling=hot)
    assert run_generate(str(trained["exported"]), PROMPT, sampling=hot) == first


@pytest.mark.parametrize("args, words", [
    (["{run}"], "give --prompt TEXT, or -i for a chat"),
    (["{exported}", "-p", "x", "--compare"], "--compare shows base vs adapter"),
    (["{run}", "-p", "x", "--temperature", "-1"], "--temperature -1.0 must be >= 0"),
    (["{run}", "-p", "x", "--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["{run}", "-p", "x", "--method", "aletheia"], "--method aletheia chooses a run of a compare folder"),
    (["{base}/nope", "-p", "x"], "nope"),
])
def test_bad_generate_input_is_one_line(trained, capsys, args, words):
    argv = ["generate", *[a.format(**{k: str(v) for k, v in trained.items()}) for a in args]]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err
