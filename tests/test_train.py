"""The shared training loop: it learns, it only touches the selected adapters, it is reproducible."""

import json

import pytest
import torch
from conftest import CharTokenizer, alpaca_records, tiny_llama

from aletheia.architectures import get_architecture
from aletheia.config import TrainConfig
from aletheia.data import tokenize_examples
from aletheia.examples import Example
from aletheia.lora import aletheia_lora_config, apply_lora
from aletheia.train import train_lora
from aletheia.utils import set_seed


def items():
    examples = [Example(messages=[{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}],
                        instruction=r["instruction"]) for r in alpaca_records(16)]
    return tokenize_examples(CharTokenizer(), examples, max_length=96)


def selective_model(layers=(1, 2), seed=0):
    # a wider init than the default 0.02, so the logits can move far enough to learn in a few steps
    model = tiny_llama(num_layers=4, seed=seed, initializer_range=0.2)
    set_seed(seed)
    return apply_lora(model, aletheia_lora_config(get_architecture(model), list(layers)))


def test_only_the_selected_layers_adapter_weights_change(tmp_path):
    model = selective_model(layers=(1, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(steps=3, batch_size=2, grad_accum=1, lr=1e-2, warmup_steps=0)
    train_lora(model, items(), cfg, seed=0, pad_id=2, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "training changed nothing"
    assert all("lora_" in n for n in changed)
    assert {int(n.split(".layers.")[1].split(".")[0]) for n in changed} == {1, 2}


def test_a_short_run_lowers_the_loss(tmp_path):
    model = selective_model(layers=(0, 1, 2, 3))
    cfg = TrainConfig(steps=30, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=3)
    result = train_lora(model, items(), cfg, seed=0, pad_id=2, metrics_path=tmp_path / "m.jsonl", progress=False)
    assert result.status == "completed" and result.steps_done == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first * 0.8
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[0]["lr"] < rows[3]["lr"]  # warmup ...
    assert rows[-1]["lr"] < rows[10]["lr"]  # ... then cosine decay


def test_same_seed_gives_identical_losses():
    cfg = TrainConfig(steps=4, batch_size=2, grad_accum=2, lr=1e-3, warmup_steps=1)
    runs = []
    for _ in range(2):
        model = selective_model(seed=3)
        set_seed(3)
        runs.append(train_lora(model, items(), cfg, seed=3, pad_id=2, progress=False).losses)
    assert runs[0] == runs[1]


def test_a_non_finite_loss_fails_the_run_instead_of_crashing():
    model = selective_model()
    with torch.no_grad():
        model.get_base_model().model.layers[3].mlp.down_proj.weight.fill_(float("inf"))
    cfg = TrainConfig(steps=5, batch_size=2, grad_accum=1, warmup_steps=0)
    result = train_lora(model, items(), cfg, seed=0, pad_id=2, progress=False)
    assert result.status == "failed"
    assert result.failure["step"] == 1 and "non-finite" in result.failure["reason"]


def test_compiled_blocks_train_to_the_same_losses():
    cfg = TrainConfig(steps=3, batch_size=2, grad_accum=1, lr=1e-2, warmup_steps=0)
    eager = train_lora(selective_model(), items(), cfg, seed=0, pad_id=2, progress=False).losses
    compiled = train_lora(selective_model(), items(), cfg.replace(compile=True), seed=0, pad_id=2,
                          progress=False).losses
    assert compiled == pytest.approx(eager, rel=1e-5)
