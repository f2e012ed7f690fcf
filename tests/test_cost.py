"""The step-time cost model: features, fitting, calibration on a tiny model, caching, backward floor."""

import pytest
import torch
from conftest import tiny_llama
from test_probe import make_batches

from aletheia.architectures import get_architecture
from aletheia.config import AdapterConfig
from aletheia.cost import (
    CostModel,
    adapter_ranks,
    backward_floor,
    calibrate,
    fit_coefficients,
    matched_adapter,
    module_shapes,
    step_features,
)
from aletheia.errors import AletheiaError
from aletheia.lora import aletheia_lora_config, apply_lora, standard_lora_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALETHEIA_CACHE", str(tmp_path / "cache"))


def test_features_count_backward_depth_from_the_lowest_layer_and_lora_parameters():
    model = tiny_llama(num_layers=6)
    arch = get_architecture(model)
    shapes = module_shapes(model)
    assert shapes[0]["q_proj"] == [32, 32] and shapes[0]["k_proj"] == [32, 16]
    assert shapes[0]["down_proj"] == [64, 32]
    ranks = adapter_ranks(arch, AdapterConfig(attention_rank=2, mlp_rank=4))
    top = step_features(shapes, [5], ranks)
    assert top["per_block"] == 1  # backward only through the top block
    assert step_features(shapes, [2, 5], ranks)["per_block"] == 4
    # LoRA parameters = rank x (in + out), summed; they match what PEFT creates
    cfg = aletheia_lora_config(arch, [2, 5], AdapterConfig(attention_rank=2, mlp_rank=4))
    peft_model = apply_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert step_features(shapes, [2, 5], ranks)["per_mparam"] * 1e6 == pytest.approx(trainable)
    # the rank-independent term counts each adapted module's in + out width, whatever its rank
    widths = sum(sum(shape) for shape in shapes[0].values())
    assert step_features(shapes, [2, 5], ranks)["per_module"] * 1e4 == pytest.approx(2 * widths)
    assert step_features(shapes, [2, 5], adapter_ranks(arch, AdapterConfig(), standard=True))["per_module"] == \
        step_features(shapes, [2, 5], ranks)["per_module"]


def test_fit_recovers_known_coefficients_and_never_goes_negative():
    rows = [{"intercept": 1.0, "per_block": b, "per_module": m, "per_mparam": p} for b, m, p in
            [(1, 1, 0.1), (6, 1, 0.1), (3, 4, 0.5), (6, 6, 1.0), (2, 2, 0.3), (6, 6, 2.0)]]
    truth = {"intercept": 0.5, "per_block": 0.2, "per_module": 0.1, "per_mparam": 0.3}
    ys = [sum(truth[k] * r[k] for k in truth) for r in rows]
    fitted = fit_coefficients(rows, ys)
    assert fitted == pytest.approx(truth)
    # a noisy negative slope is clipped to zero, the rest refitted
    ys_bad = [1.0 - 0.01 * r["per_mparam"] for r in rows]
    fitted = fit_coefficients(rows, ys_bad)
    assert all(v >= 0 for v in fitted.values())


def test_timed_steps_are_scaled_to_one_token_count_before_the_fit():
    from aletheia.cost import fit_timed

    feats = {"a": {"intercept": 1.0, "per_block": 1.0, "per_module": 0.0, "per_mparam": 0.0},
             "b": {"intercept": 1.0, "per_block": 3.0, "per_module": 0.0, "per_mparam": 0.0}}
    # the same work per token: a 200-token step takes twice a 100-token step
    times = {"a": [1.0, 2.0], "b": [2.0, 4.0], "held-out": [9.0]}
    tokens = {"a": [100, 200], "b": [100, 200], "held-out": [150]}
    coef, ref, scaled = fit_timed(feats, times, tokens)
    assert ref == 150 and scaled["a"] == pytest.approx([1.5, 1.5]) and scaled["held-out"] == [9.0]
    assert coef["intercept"] == pytest.approx(0.75) and coef["per_block"] == pytest.approx(0.75)


def test_calibration_fits_timed_steps_leaves_the_model_unchanged_and_is_cached(tmp_path):
    model = tiny_llama(num_layers=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = make_batches(n=2, batch_size=2, length=16)
    adapter = AdapterConfig(attention_rank=2, mlp_rank=4, standard_rank=2)
    cost = calibrate(model, batches, adapter, rounds=2)
    # the model is the plain base model again: no adapters, same weights and flags
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    names = {pt["name"] for pt in cost.points}
    assert {"standard", "top-1", "bottom-1", "even", "upper-half", "upper-half-wide", "all"} <= names
    point = {pt["name"]: pt for pt in cost.points}  # the wide set differs from upper-half in rank alone
    wide, upper = point["upper-half-wide"]["features"], point["upper-half"]["features"]
    assert wide["per_mparam"] > 2 * upper["per_mparam"] and wide["per_module"] == upper["per_module"]
    assert all(len(pt["all_seconds"]) == 2 and pt["seconds"] > 0 for pt in cost.points)
    assert all(v >= 0 for v in cost.coefficients.values())
    assert cost.predict_standard(adapter) > 0
    # cached: a second call reads the file instead of timing again
    cached = calibrate(model, batches, adapter, rounds=2)
    assert cached.points == cost.points and cached.key == cost.key
    # the model round-trips through its file
    cost.save(tmp_path / "c.json")
    assert CostModel.load(tmp_path / "c.json").predict([1, 3], adapter) == cost.predict([1, 3], adapter)


def test_prediction_grows_with_backward_depth_and_scales_with_tokens():
    cost = CostModel(num_layers=4, coefficients={"intercept": 1.0, "per_block": 0.5, "per_module": 0.1,
                                                 "per_mparam": 2.0},
                     tokens=100, shapes=[{"q_proj": [8, 8]}] * 4, attention=["q_proj"], mlp=[])
    adapter = AdapterConfig(attention_rank=4, standard_rank=4, modules="attention")
    assert cost.predict([3]) < cost.predict([1, 3]) < cost.predict([0, 3])
    assert cost.predict([0], adapter) == pytest.approx(1.0 + 0.5 * 4 + 0.1 * 16 / 1e4 + 2.0 * 64 / 1e6)
    assert cost.predict([0], adapter, tokens=200) == pytest.approx(2 * cost.predict([0], adapter))
    assert cost.predict_standard(adapter) == pytest.approx(1.0 + 0.5 * 4 + 0.1 * 4 * 16 / 1e4 + 2.0 * 4 * 64 / 1e6)


def test_nothing_below_the_lowest_adapter_keeps_a_graph():
    """Activations below the lowest adapted block are not saved for backward: PyTorch frees them."""
    model = tiny_llama(num_layers=6)
    arch = get_architecture(model)
    batch = make_batches(n=1)[0]
    peft_model = apply_lora(model, aletheia_lora_config(arch, [3, 5]))
    peft_model.train()
    assert backward_floor(peft_model, batch) == 3
    peft_model.unload()
    # standard LoRA reaches the bottom block; unfrozen embeddings would too
    peft_model = apply_lora(model, standard_lora_config(arch, 6))
    assert backward_floor(peft_model, batch) == 0
    peft_model.unload()
    peft_model = apply_lora(model, aletheia_lora_config(arch, [5]))
    peft_model.get_input_embeddings().weight.requires_grad_(True)
    assert backward_floor(peft_model, batch) == 0


def test_matched_parameters_raise_the_mlp_rank_to_standard_loras_count_and_no_further():
    model = tiny_llama(num_layers=6)
    arch = get_architecture(model)
    shapes = module_shapes(model)
    adapter = AdapterConfig(attention_rank=2, mlp_rank=4, standard_rank=4, match_parameters=True)
    standard = sum(p.numel() for p in apply_lora(tiny_llama(num_layers=6), standard_lora_config(
        arch, 6, adapter)).parameters() if p.requires_grad)

    def trainable(layers, a):
        m = apply_lora(tiny_llama(num_layers=6), aletheia_lora_config(arch, layers, a))
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    for layers in ([4, 5], [3, 4, 5], [0, 2, 4]):
        matched = matched_adapter(shapes, arch.attention, arch.mlp, layers, adapter)
        assert matched.attention_rank == 2 and matched.mlp_rank > 4
        assert trainable(layers, matched) <= standard < trainable(
            layers, matched.replace(mlp_rank=matched.mlp_rank + 1))
    # off, or already above standard's count: the configured ranks stay
    assert matched_adapter(shapes, arch.attention, arch.mlp, [4, 5], adapter.replace(match_parameters=False)) == \
        adapter.replace(match_parameters=False)
    every = adapter.replace(attention_rank=4)  # every layer at standard's rank already holds its count
    assert matched_adapter(shapes, arch.attention, arch.mlp, list(range(6)), every).mlp_rank == 4


def test_match_parameters_needs_mlp_adapters():
    with pytest.raises(AletheiaError, match="match_parameters"):
        AdapterConfig(match_parameters=True, modules="attention").validate()
