"""The gradient probe: what it measures, and that both modes measure the same thing."""

import math

import pytest
import torch
from conftest import tiny_llama

from aletheia.data import collate, probe_batches
from aletheia.probe import run_probe


def make_batches(n=3, batch_size=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n * batch_size):
        ids = torch.randint(3, 128, (length,), generator=g).tolist()
        items.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return probe_batches(items, n, batch_size, seed=seed, pad_id=2)


def test_block_with_largest_gradient_is_ranked_first():
    model = tiny_llama(num_layers=6)
    boosted = 3
    for p in model.model.layers[boosted].parameters():
        p.register_hook(lambda g: g * 1000.0)
    result = run_probe(model, make_batches(), progress=False)
    assert result.ranking[0] == boosted
    assert len(result.scores) == 6 and all(s > 0 for s in result.scores)


def test_single_pass_and_chunked_give_the_same_scores():
    model = tiny_llama(num_layers=5)
    batches = make_batches()
    single = run_probe(model, batches, mode="single-pass", progress=False)
    chunked = run_probe(model, batches, mode="chunked", chunk_size=2, progress=False)
    assert chunked.scores == pytest.approx(single.scores, rel=1e-5)
    assert chunked.ranking == single.ranking
    assert single.passes == 3
    assert chunked.passes == math.ceil(5 / 2) * 3


def test_score_is_sum_over_batches_of_block_gradient_norm():
    model = tiny_llama(num_layers=2)
    batches = make_batches(n=2)
    result = run_probe(model, batches, progress=False)
    expected = [0.0, 0.0]
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for i, block in enumerate(model.model.layers):
            expected[i] += torch.sqrt(sum(p.grad.pow(2).sum() for p in block.parameters())).item()
    assert result.scores == pytest.approx(expected, rel=1e-5)


def test_probe_leaves_the_model_as_it_found_it():
    model = tiny_llama(num_layers=2)
    model.train()
    for p in model.model.embed_tokens.parameters():
        p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    run_probe(model, make_batches(n=1), progress=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_probe_ignores_prompt_and_padding_tokens():
    """Changing only masked (prompt) label positions must not change the scores."""
    model = tiny_llama(num_layers=2)
    ids = list(range(10, 30))
    a = [collate([{"input_ids": ids, "labels": [-100] * 10 + ids[10:]},
                  {"input_ids": ids[:12], "labels": [-100] * 6 + ids[6:12]}], pad_id=2)]
    b = [{k: v.clone() for k, v in a[0].items()}]
    b[0]["input_ids"][1, 12:] = 99  # different padding ids, still masked
    sa = run_probe(model, a, progress=False).scores
    sb = run_probe(model, b, progress=False).scores
    assert sa == pytest.approx(sb, rel=1e-6)


def test_same_seed_same_scores():
    batches_1 = make_batches(seed=7)
    batches_2 = make_batches(seed=7)
    s1 = run_probe(tiny_llama(seed=1), batches_1, progress=False).scores
    s2 = run_probe(tiny_llama(seed=1), batches_2, progress=False).scores
    assert s1 == s2
