"""Padding-free micro-batches (``aletheia.packing``): the same loss and gradients as padded batches on
every registered family, and everywhere a step is computed (probe, held-out loss, cost model, training).
"""

from __future__ import annotations

import pytest
import torch
from test_families import COMMON, FAMILIES, KV, build

from aletheia import packing
from aletheia.architectures import ARCHITECTURES, get_architecture
from aletheia.config import TrainConfig
from aletheia.data import collate, train_batches
from aletheia.evaluation.loss import heldout_loss
from aletheia.lm_loss import causal_lm_loss
from aletheia.probe import run_probe
from aletheia.train import train_lora

SLIDING = {"sliding_window": 5}  # shorter than the examples, so the window is exercised
EXTRA = {"mistral": SLIDING, "gemma-2": SLIDING, "gemma-3": SLIDING, "olmo-3": SLIDING,
         "mixtral": {"output_router_logits": True, "router_aux_loss_coef": 0.5}}
CASES = [(name, cls, {**extra, **EXTRA.get(name, {})}, family)
         for name, cls, extra, family in FAMILIES if family != "generic"]


def items_of(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    """Random sequences of the given lengths; the first three tokens of each are prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, COMMON["vocab_size"], (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return out


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def head_inputs(model, fn):
    """Shapes the decoder's token embedding saw while ``fn`` ran (what layout the step used)."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        result = fn()
    finally:
        handle.remove()
    return result, seen


def test_every_registered_family_is_covered():
    assert {family for *_, family in CASES} == set(ARCHITECTURES.names())
    assert all(arch.packed_attention for arch in ARCHITECTURES.values())


@pytest.mark.parametrize("row_tokens", [None, 20], ids=["one row", "rows of 20"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_packed_and_padded_give_the_same_loss_and_gradients(case, row_tokens, monkeypatch):
    _, config_class, extra, _ = case
    model = build(config_class, extra).eval()  # no dropout: both layouts see the same network
    batch = collate(items_of([12, 7, 14, 9]), pad_id=2)
    monkeypatch.setattr(packing, "ROW_TOKENS", row_tokens)

    packing.set_padding_free(model, False)
    (padded, padded_grads), seen = head_inputs(model, lambda: loss_and_grads(model, batch))
    assert seen == [(4, 14)]
    packing.set_padding_free(model, True)
    (packed, packed_grads), seen = head_inputs(model, lambda: loss_and_grads(model, batch))
    router = extra.get("output_router_logits", False)
    # 42 real tokens: one row, or first-fit rows of at most 20 tokens (14 | 12+7 | 9), the shorter
    # ending in a padding run; a router loss averages over every position, so Mixtral keeps one row
    assert seen == ([(1, 42)] if row_tokens is None or router else [(3, 19)])

    assert torch.allclose(packed, padded, atol=1e-6)
    assert packed_grads.keys() == padded_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_packed_rows_restart_positions_and_separate_labels():
    items = items_of([5, 3, 4])
    packed = packing.pack(items)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    assert packed["input_ids"][0].tolist() == sum((it["input_ids"] for it in items), [])
    labels = packed["labels"][0].tolist()
    assert labels[0] == labels[5] == labels[8] == -100  # no example scores its predecessor's last token
    rows = packing.pack(items, row_tokens=7, pad_id=2)
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 0, 1, 2, 3]]
    assert rows["labels"][0, 5:].tolist() == [-100, -100] and rows["input_ids"][0, 5:].tolist() == [2, 2]


def test_a_model_that_cannot_confine_packed_examples_says_so_once_and_stays_padded(capsys):
    """Phi goes through the generic architecture search: packing is not verified there."""
    model = build("PhiConfig", {}).eval()
    assert not get_architecture(model).packed_attention
    batch = collate(items_of([12, 7, 14]), pad_id=2)
    (first, _), seen = head_inputs(model, lambda: loss_and_grads(model, batch))
    loss_and_grads(model, batch)
    err = capsys.readouterr().err
    assert err.count("padding-free batches off") == 1 and "phi (generic architecture)" in err
    assert seen == [(3, 14)]  # padded, never mixed
    packing.set_padding_free(model, False)
    assert torch.allclose(loss_and_grads(model, batch)[0], first)


def test_an_attention_implementation_without_packing_support_is_refused(capsys):
    model = build("LlamaConfig", KV)
    model.config._attn_implementation = "my_kernel"
    assert "'my_kernel' does not confine packed examples" in packing.unsupported_reason(model)
    assert not packing.padding_free(model)
    assert not packing.padding_free(model)
    assert capsys.readouterr().err.count("\n") == 1


def test_probe_scores_and_selection_are_unchanged():
    model = build("LlamaConfig", KV)
    batches = [collate(items_of([12, 6, 9, 14], seed=s), pad_id=2) for s in (1, 2, 3)]
    packing.set_padding_free(model, False)
    padded = run_probe(model, batches, progress=False)
    packing.set_padding_free(model, True)
    packed = run_probe(model, batches, progress=False)
    assert packed.scores == pytest.approx(padded.scores, rel=1e-5)
    assert packed.ranking == padded.ranking
    assert packed.extra["padding_free"] and not padded.extra["padding_free"]


def test_heldout_loss_and_cost_tokens_follow_the_layout():
    model = build("Qwen2Config", KV)
    batches = [collate(items_of([12, 6, 9], seed=4), pad_id=2), collate(items_of([5, 13], seed=5), pad_id=2)]
    packing.set_padding_free(model, False)
    padded = heldout_loss(model, batches)
    assert packing.step_tokens(model, batches[0]) == 3 * 12
    packing.set_padding_free(model, True)
    assert heldout_loss(model, batches) == pytest.approx(padded, rel=1e-6)
    assert packing.step_tokens(model, batches[0]) == 12 + 6 + 9  # the cost model times what trains


def test_training_takes_the_same_steps_packed():
    """Without dropout (whose masks are drawn per position) the per-step losses agree."""
    from aletheia.config import AdapterConfig
    from aletheia.lora import apply_lora, standard_lora_config

    items = items_of([12, 6, 9, 14, 8, 11, 5, 13], seed=6)
    losses = {}
    for free in (False, True):
        model = build("LlamaConfig", KV)
        packing.set_padding_free(model, free)
        torch.manual_seed(0)
        model = apply_lora(model, standard_lora_config(get_architecture(model), 4, AdapterConfig(dropout=0.0)))
        cfg = TrainConfig(steps=3, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=0)
        result = train_lora(model, items, cfg, seed=0, pad_id=2, progress=False)
        losses[free] = result.losses
        assert result.tokens_per_second > 0
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    # the stream is the padded one: the same micro-batches either way
    assert next(train_batches(items, 4, 0, 2))["input_ids"].shape[0] == 4
