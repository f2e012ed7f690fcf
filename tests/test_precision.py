"""Precision and memory options: fp32/bf16/fp16 training, non-finite losses, QLoRA's CUDA check,
gradient checkpointing (same numbers, recomputed activations)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_llama
from test_families import as_batch, token_items

from aletheia.architectures import get_architecture, get_blocks
from aletheia.cli import main
from aletheia.config import TrainConfig
from aletheia.errors import AletheiaError
from aletheia.lora import aletheia_lora_config, apply_lora
from aletheia.models import enable_gradient_checkpointing, load_model_and_tokenizer
from aletheia.probe import run_probe
from aletheia.train import train_lora

STEPS = TrainConfig(steps=3, batch_size=2, grad_accum=1, lr=1e-2, warmup_steps=0)


def adapted(dtype: torch.dtype = torch.float32, checkpointing: bool = False):
    model = tiny_llama(num_layers=4).to(dtype)
    if checkpointing:
        enable_gradient_checkpointing(model)
    torch.manual_seed(0)
    return apply_lora(model, aletheia_lora_config(get_architecture(model), [1, 2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_training_runs_in_each_precision(dtype):
    model = adapted(dtype)
    result = train_lora(model, token_items(8), STEPS, seed=0, pad_id=2, dtype=dtype, progress=False)
    assert result.status == "completed" and len(result.losses) == 3
    assert all(math.isfinite(x) for x in result.losses)
    base = get_blocks(model)[1].self_attn.q_proj
    assert base.base_layer.weight.dtype == dtype  # the base model stays in the run's precision
    assert base.lora_A["default"].weight.dtype == torch.float32  # PEFT keeps adapters in fp32
    # fp16 scales the loss (the scale halves whenever scaled gradients overflow); the others do not
    assert (result.loss_scale is not None) == (dtype == torch.float16)


def test_a_non_finite_loss_fails_the_run_with_its_step_and_reason():
    model = adapted()
    calls = {"n": 0}

    def poison_from_step_3(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    model.get_base_model().lm_head.register_forward_hook(poison_from_step_3)
    result = train_lora(model, token_items(8), TrainConfig(steps=5, batch_size=2, grad_accum=1, warmup_steps=0),
                        seed=0, pad_id=2, progress=False)
    assert result.status == "failed" and result.steps_done == 2
    assert result.failure == {"step": 3, "reason": "non-finite loss (nan) at step 3"}


def test_an_overflowing_run_ends_as_a_failed_run_folder(tiny_model_dir, alpaca_file, tmp_path, capsys):
    # like the paper's Pythia fp16 runs, forced: a learning rate so large that the logits overflow
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--output", str(out),
              "--steps", "3", "--lr", "1e20", "--dtype", "float32", "--layers", "0,1,2,3", "--batches", "1",
              "--batch-size", "2", "--max-length", "48", "--accuracy-examples", "0", "--quiet"])
    assert exit_.value.code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["eval_loss"] is None
    assert summary["failed_step"] == summary["steps_done"] + 1
    assert "non-finite loss" in summary["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_quantize_4bit_without_cuda_stops_with_one_clear_message(tiny_model_dir, alpaca_file, tmp_path, capsys):
    with pytest.raises(AletheiaError, match="needs a CUDA GPU"):
        load_model_and_tokenizer(str(tiny_model_dir), quantize="4bit")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--output",
              str(tmp_path / "q"), "--quantize", "4bit", "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quantize 4bit (QLoRA) needs a CUDA GPU" in err[0]
    assert not (tmp_path / "q").exists()  # it stopped before loading anything


def count_block_forwards(model) -> dict:
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    get_blocks(model)[0].mlp.act_fn.register_forward_hook(hook)  # runs again when the block is recomputed
    return calls


def test_gradient_checkpointing_gives_the_same_probe_scores():
    batches = [as_batch(token_items(2, seed=s)) for s in (1, 2)]
    plain = run_probe(tiny_llama(num_layers=4), batches, progress=False)
    model = tiny_llama(num_layers=4)
    enable_gradient_checkpointing(model)
    calls = count_block_forwards(model)
    checkpointed = run_probe(model, batches, progress=False)
    assert calls["n"] == 2 * len(batches)  # each block ran again in backward: it was recomputed
    assert checkpointed.scores == pytest.approx(plain.scores, rel=1e-5)
    assert checkpointed.extra["gradient_checkpointing"]


def test_gradient_checkpointing_gives_the_same_training_losses():
    plain = train_lora(adapted(), token_items(8), STEPS, seed=0, pad_id=2, progress=False)
    model = adapted(checkpointing=True)
    calls = count_block_forwards(model)
    checkpointed = train_lora(model, token_items(8), STEPS, seed=0, pad_id=2, progress=False)
    assert calls["n"] == 2 * 3
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)


@pytest.mark.parametrize("mode", ["single-pass", "chunked"])
def test_weights_without_gradients_are_scored_from_activations(monkeypatch, mode):
    """QLoRA's 4-bit weights hold no gradient; the probe rebuilds each weight-gradient norm from the
    layer's inputs and output gradients. Forced on every linear layer, it must give the usual scores."""
    from aletheia import probe

    batches = [as_batch(token_items(2, seed=s)) for s in (1, 2)]
    usual = run_probe(tiny_llama(num_layers=4), batches, mode, chunk_size=3, progress=False)
    monkeypatch.setattr(probe, "_activation_scored",
                        lambda block: [m for m in block.modules() if isinstance(m, torch.nn.Linear)])
    rebuilt = run_probe(tiny_llama(num_layers=4), batches, mode, chunk_size=3, progress=False)
    assert rebuilt.scores == pytest.approx(usual.scores, rel=1e-6)


def autocast_seen(model) -> list[bool]:
    """Whether autocast was on each time the first block's attention ran."""
    seen = []
    get_blocks(model)[0].self_attn.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_probe_cost_timing_and_heldout_loss_compute_in_the_runs_precision(dtype):
    """A bf16 run trains under autocast; the probe, the cost model's timed steps and the held-out
    loss must compute the same way, or they measure a different step than the one trained."""
    from aletheia.cost import time_adapter_steps
    from aletheia.evaluation.loss import heldout_loss
    from aletheia.lora import standard_lora_config

    half = dtype != torch.float32
    batches = [as_batch(token_items(2, seed=s)) for s in (1, 2)]
    model = tiny_llama(num_layers=4).to(dtype)
    seen = autocast_seen(model)
    run_probe(model, batches, progress=False)
    time_adapter_steps(model, {"std": standard_lora_config(get_architecture(model), 4)}, batches, rounds=1)
    assert seen and all(on == half for on in seen)
    seen.clear()
    model = adapted(dtype)  # fp32 adapters on a base model in the run's precision
    seen = autocast_seen(model)
    heldout_loss(model, batches)
    train_lora(model, token_items(4), STEPS, seed=0, pad_id=2, dtype=dtype, progress=False)
    assert len(seen) == len(batches) + STEPS.steps and all(on == half for on in seen)
