"""The training engine on accelerate takes the steps of the hand-written loop it replaced.

The expected numbers below were recorded from that loop (the ``train_lora`` of commit 09c09cc, kept as
``bench/engine.py``'s ``old_train_lora``) before accelerate took over its plumbing: same model, data,
seed and settings, one process, padded batches (as then; padding-free batches came later and round
differently). The new engine must give them to float rounding, so no number in the README moves; on
the CPU they were recorded on (AMD EPYC) it gives them bit for bit. Half-precision matmuls take other
kernels on other CPUs (an Intel Xeon with AMX gave bf16 losses 1.8e-3 apart, fp16 1.2e-4), so there
the recorded numbers hold to the dtype's own epsilon; fp32 holds to 1e-6 everywhere. The last test runs
the frozen old loop and the engine side by side, with today's batches: the same losses and gradient
norms, bit for bit, on whatever CPU runs it.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_train import items, selective_model

from aletheia.config import TrainConfig
from aletheia.packing import set_padding_free
from aletheia.train import train_lora

SETTINGS = TrainConfig(steps=6, batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=2)
# per precision: per-step losses, grad norms, final loss scale, Σ|adapter weights| after training
RECORDED = {
    "float32": ([5.425540447235107, 5.569544315338135, 4.392947673797607, 4.0348005294799805,
                 3.652610421180725, 2.679323673248291],
                [5.440213203430176, 6.240078926086426, 3.6537892818450928, 2.3578922748565674,
                 2.4770078659057617, 2.1180429458618164], None, 1219.0306247489116),
    "bfloat16": ([5.428280591964722, 5.5770041942596436, 4.391150236129761, 4.024100065231323,
                  3.648946762084961, 2.6744184494018555],
                 [5.433258533477783, 6.257863521575928, 3.633894205093384, 2.3430864810943604,
                  2.476536512374878, 2.107592821121216], None, 1219.422182450955),
    "float16": ([5.425200700759888, 5.5693840980529785, 4.393507480621338, 4.034372091293335,
                 3.6522486209869385, 2.6793713569641113],
                [5.441089630126953, 6.24091100692749, 3.6552159786224365, 2.3565621376037598,
                 2.4776597023010254, 2.1189029216766357], 65536.0, 1219.1268109719458),
}


def adapted(dtype: torch.dtype, padded: bool = False):
    """The tests' selective LoRA model (adapter dropout on), base weights in ``dtype``, adapters fp32."""
    model = selective_model()
    if padded:
        set_padding_free(model, False)
    if dtype != torch.float32:
        model = model.to(dtype)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


@pytest.mark.parametrize("name", list(RECORDED))
def test_the_engine_gives_the_recorded_losses_of_the_old_loop(name, tmp_path):
    dtype = getattr(torch, name)
    model = adapted(dtype, padded=True)
    result = train_lora(model, items(), SETTINGS, seed=5, pad_id=2, dtype=dtype, progress=False,
                        metrics_path=tmp_path / "m.jsonl")
    losses, grad_norms, loss_scale, weight_sum = RECORDED[name]
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    rel = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps  # bf16 7.8e-3, fp16 9.8e-4
    assert result.losses == pytest.approx(losses, rel=rel, abs=0)
    assert [r["grad_norm"] for r in records] == pytest.approx(grad_norms, rel=rel, abs=0)
    assert result.loss_scale == loss_scale
    adapter_sum = sum(float(p.detach().double().abs().sum()) for p in model.parameters() if p.requires_grad)
    assert adapter_sum == pytest.approx(weight_sum, rel=rel)  # float rounding: thread count, order


def test_after_training_the_model_runs_its_own_forward_again():
    """accelerate wraps ``forward`` in autocast for mixed precision; the run unwraps it, so a later
    evaluation or a second run computes in the model's precision as before."""
    model = adapted(torch.bfloat16)
    plain = type(model).forward
    train_lora(model, items(), SETTINGS.replace(steps=1), seed=5, pad_id=2, dtype=torch.bfloat16, progress=False)
    assert "_original_forward" not in model.__dict__ and getattr(model.forward, "__func__", None) is plain


def test_the_engine_and_the_frozen_old_loop_give_equal_losses_here():
    """Side by side on this machine (the recorded numbers above came from one CPU): bit for bit."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "engine.py"
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old = bench.old_train_lora(adapted(torch.float32), items(), SETTINGS, seed=5, pad_id=2)
    new = bench.new_train_lora(adapted(torch.float32), items(), SETTINGS, seed=5, pad_id=2)
    assert new[0] == old[0] and new[1] == old[1]  # losses, grad norms
