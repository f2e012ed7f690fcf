"""Layer selection and the selective LoRA config that PEFT receives."""

import pytest
from conftest import tiny_llama
from peft import LoraConfig
from test_probe import make_batches

from aletheia.architectures import get_architecture
from aletheia.config import AdapterConfig, ProbeConfig
from aletheia.errors import AletheiaError
from aletheia.lora import (
    aletheia_lora_config,
    apply_lora,
    found_adapters,
    standard_lora_config,
    trainable_parameters,
    verify_adapters,
)
from aletheia.selection import SelectionContext, select_layers, top_fraction


def test_top_fraction_keeps_the_highest_scores_with_a_deterministic_tie_break():
    assert top_fraction([0.1, 0.9, 0.5, 0.9], 0.5) == [1, 3]
    assert top_fraction([1.0, 1.0, 1.0, 1.0], 0.5) == [0, 1]  # ties go to the lower index
    assert top_fraction([3.0, 2.0, 1.0], 0.01) == [0]  # at least one layer
    assert top_fraction([3.0, 2.0, 1.0], 1.0) == [0, 1, 2]
    with pytest.raises(AletheiaError):
        top_fraction([1.0, 2.0], 0.0)


def test_explicit_layers_override_the_probe_choice():
    model = tiny_llama(num_layers=4)
    ctx = SelectionContext(model, make_batches(n=1), ProbeConfig(layers=[3, 0]), progress=False)
    sel = select_layers(ctx)
    assert sel.layers == [0, 3]
    assert len(sel.details["probe_selected_layers"]) == 2
    with pytest.raises(AletheiaError, match="do not exist"):
        select_layers(SelectionContext(model, make_batches(n=1), ProbeConfig(layers=[9]), progress=False))


def test_unknown_selector_lists_the_known_ones():
    ctx = SelectionContext(tiny_llama(), make_batches(n=1), ProbeConfig(selector="nope"), progress=False)
    with pytest.raises(AletheiaError, match="gradient-norm"):
        select_layers(ctx)


def test_aletheia_adapters_sit_only_on_selected_layers_with_asymmetric_ranks():
    model = tiny_llama(num_layers=6)
    arch = get_architecture(model)
    cfg = aletheia_lora_config(arch, [1, 4], AdapterConfig(attention_rank=4, mlp_rank=8))
    assert isinstance(cfg, LoraConfig) and cfg.layers_pattern == "layers"
    peft_model = apply_lora(model, cfg)
    found = found_adapters(peft_model, "layers")
    assert {layer for layer, _ in found} == {1, 4}
    for (layer, name), rank in found.items():
        assert rank == (8 if name in arch.mlp else 4)
    assert len(found) == 2 * 7
    lora_a = peft_model.base_model.model.model.layers[1].mlp.down_proj.lora_A["default"]
    assert lora_a.weight.shape[0] == 8
    assert peft_model.peft_config["default"].alpha_pattern["down_proj"] == 16


def test_standard_lora_covers_every_layer_with_one_rank():
    model = tiny_llama(num_layers=3)
    cfg = standard_lora_config(get_architecture(model), 3)
    peft_model = apply_lora(model, cfg)
    found = found_adapters(peft_model, "layers")
    assert len(found) == 3 * 7 and set(found.values()) == {16}
    assert cfg.lora_alpha == 32


def test_placement_check_fails_loudly_when_peft_skips_modules():
    model = tiny_llama(num_layers=2)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "missing_proj"], layers_to_transform=[0],
                     layers_pattern="layers")
    from peft import get_peft_model
    peft_model = get_peft_model(model, cfg)
    with pytest.raises(AletheiaError, match="missing adapters"):
        verify_adapters(peft_model, cfg)


def test_selective_lora_trains_fewer_parameters_than_standard():
    arch = get_architecture(tiny_llama())
    ale = trainable_parameters(apply_lora(tiny_llama(num_layers=4), aletheia_lora_config(arch, [2, 3])))
    std = trainable_parameters(apply_lora(tiny_llama(num_layers=4), standard_lora_config(arch, 4)))
    # LoRA adds r * (in + out) parameters per module; hidden 32, kv 16, intermediate 64
    attn = lambda r: r * (64 + 48 + 48 + 64)  # noqa: E731  q, k, v, o
    mlp = lambda r: r * (96 + 96 + 96)  # noqa: E731  gate, up, down
    assert ale == 2 * (attn(16) + mlp(32))
    assert std == 4 * (attn(16) + mlp(16))
    assert ale < std
