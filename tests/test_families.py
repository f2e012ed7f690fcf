"""Every supported architecture family, end to end on a tiny random model built from its config class.

For each family: the probe scores every block, selective LoRA lands on exactly the selected blocks'
attention and MLP modules with the requested ranks, three training steps change only those adapter
weights, and the saved adapter reloads with ``PeftModel.from_pretrained`` and merges to the same logits.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import transformers
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from aletheia.architectures import (
    ARCHITECTURES,
    get_architecture,
    get_blocks,
    resolve_architecture,
    set_architecture,
    supported_table,
)
from aletheia.config import AdapterConfig, TrainConfig
from aletheia.data import train_batches
from aletheia.errors import AletheiaError
from aletheia.lm_loss import causal_lm_loss
from aletheia.lora import aletheia_lora_config, apply_lora
from aletheia.probe import run_probe
from aletheia.selection import top_fraction
from aletheia.train import train_lora

LAYERS = 4
COMMON = {"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 2, "bos_token_id": 1,
          "eos_token_id": 2}
KV = {"num_key_value_heads": 2}
GPT_STYLE = {"n_embd": 32, "n_layer": LAYERS, "n_head": 4, "n_positions": 64}

# (test id, config class, extra config arguments, family the registry must report)
FAMILIES = [
    ("llama", "LlamaConfig", KV, "llama"),
    ("qwen2", "Qwen2Config", KV, "qwen2"),
    ("qwen3", "Qwen3Config", KV, "qwen2"),
    ("mistral", "MistralConfig", KV, "mistral"),
    ("phi3", "Phi3Config", KV, "phi3"),
    ("stablelm-2", "StableLmConfig", KV, "stablelm"),
    ("gpt-j", "GPTJConfig", {**GPT_STYLE, "rotary_dim": 4}, "gptj"),
    ("mixtral", "MixtralConfig", {**KV, "num_local_experts": 4, "num_experts_per_tok": 2}, "mixtral"),
    ("gpt-neox", "GPTNeoXConfig", {}, "gpt_neox"),
    ("olmo", "OlmoConfig", {}, "olmo"),
    ("olmo-2", "Olmo2Config", {}, "olmo"),
    ("olmo-3", "Olmo3Config", {}, "olmo"),
    ("gemma", "GemmaConfig", {**KV, "head_dim": 8}, "gemma"),
    ("gemma-2", "Gemma2Config", {**KV, "head_dim": 8}, "gemma"),
    ("gemma-3", "Gemma3TextConfig", {**KV, "head_dim": 8}, "gemma"),
    ("gpt2", "GPT2Config", GPT_STYLE, "gpt2"),
    ("phi (generic fallback)", "PhiConfig", {}, "generic"),
]


def build(config_class: str, extra: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**{**COMMON, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model


def token_items(n: int, length: int = 12, seed: int = 0) -> list[dict[str, list[int]]]:
    """Random token sequences whose first four tokens are prompt (label -100)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(3, 128, (length,), generator=g).tolist()
        items.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return items


def as_batch(items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([it["input_ids"] for it in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([it["labels"] for it in items])}


def placed_adapters(model: torch.nn.Module, layers_pattern: str, num_experts: int) -> dict[tuple[int, str], int]:
    """(layer, path inside the block) -> rank, read from the adapter weights themselves."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        m = re.search(rf"\.{layers_pattern}\.(\d+)\.(.+)$", name.replace(".base_layer", ""))
        assert m, f"adapter outside the blocks: {name}"
        path, rank = m.group(2), module.lora_A["default"].weight.shape[0]
        if getattr(module, "parameter_name", None):  # an expert adapter stacks one rank-r pair per expert
            path, rank = f"{path}.{module.parameter_name}", rank // num_experts
        out[(int(m.group(1)), path)] = rank
    return out


@pytest.mark.parametrize("case", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_probe_select_train_save_reload_merge(case, tmp_path):
    _, config_class, extra, family = case
    model = build(config_class, extra)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    arch = get_architecture(model)
    assert arch.family == family

    # the probe ranks every block
    batches = [as_batch(token_items(2, seed=s)) for s in (1, 2)]
    probe = run_probe(model, batches, progress=False)
    assert len(probe.scores) == LAYERS == len(get_blocks(model))
    assert all(math.isfinite(s) and s > 0 for s in probe.scores)
    assert sorted(probe.ranking) == list(range(LAYERS))

    # the adapter lands on exactly the selected blocks' attention and MLP modules, with their ranks
    layers = top_fraction(probe.scores, 0.5)
    assert len(layers) == 2
    peft_model = apply_lora(model, aletheia_lora_config(
        arch, layers, AdapterConfig(attention_rank=2, mlp_rank=4, dropout=0.0)))
    num_experts = getattr(model.config, "num_local_experts", 1)
    placed = placed_adapters(peft_model, arch.layers_pattern, num_experts)
    assert {layer for layer, _ in placed} == set(layers)
    for layer in layers:
        in_layer = {path: rank for (i, path), rank in placed.items() if i == layer}
        groups = [(arch.attention, 2), (arch.mlp + arch.experts, 4)]
        expected = {}
        for names, rank in groups:
            for want in names:
                hits = [p for p in in_layer if p == want or p.endswith("." + want)]
                assert len(hits) == 1, f"layer {layer}: {want} matched {hits}"
                expected[hits[0]] = rank
        assert in_layer == expected

    # three training steps change only the adapter weights, and every adapter learns
    with torch.no_grad():
        peft_model.eval()
        base_logits = peft_model(input_ids=batches[0]["input_ids"]).logits
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    result = train_lora(peft_model, token_items(8, seed=3),
                        TrainConfig(steps=3, batch_size=2, grad_accum=1, lr=1e-2, warmup_steps=0),
                        seed=0, pad_id=2, progress=False)
    assert result.status == "completed" and result.steps_done == 3
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_A." in n or ".lora_B." in n for n in changed)
    assert {n for n in before if ".lora_B." in n} <= changed

    # save, reload into a fresh base model, merge: the same logits each time
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=batches[0]["input_ids"]).logits
    assert not torch.allclose(trained, base_logits)
    peft_model.save_pretrained(tmp_path)
    fresh = build(config_class, extra, seed=1)
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=batches[0]["input_ids"]).logits, trained, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert not any(isinstance(m, LoraLayer) for m in merged.modules())
        assert torch.allclose(merged(input_ids=batches[0]["input_ids"]).logits, trained, atol=1e-4)


# --- mixture of experts ------------------------------------------------------------------------

MIXTRAL = ("MixtralConfig", {**KV, "num_local_experts": 4, "num_experts_per_tok": 2})


def test_moe_probe_score_includes_the_experts_and_the_router():
    model = build(*MIXTRAL)
    batch = as_batch(token_items(2, seed=1))
    probe = run_probe(model, [batch], progress=False)

    # the same score by hand: one backward with every block parameter trainable
    model.eval()
    model(**batch).loss.backward()
    blocks = get_blocks(model)
    by_hand = [math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in b.parameters())) for b in blocks]
    assert probe.scores == pytest.approx(by_hand, rel=1e-6)
    for block, score in zip(blocks, probe.scores, strict=True):
        moe = block.mlp
        assert moe.experts.gate_up_proj.grad.abs().sum() > 0 and moe.gate.weight.grad.abs().sum() > 0
        attention_only = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in block.self_attn.parameters()))
        assert attention_only < score


def test_moe_expert_adapters_sit_only_on_the_selected_layers():
    # PEFT 0.21 applies a bare target_parameters name to every layer; we pass full paths instead
    model = build(*MIXTRAL)
    arch = get_architecture(model)
    cfg = aletheia_lora_config(arch, [1, 3], AdapterConfig(attention_rank=2, mlp_rank=4))
    assert cfg.lora_dropout == 0.0  # PEFT cannot apply dropout to parameter adapters
    assert cfg.target_parameters == ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj",
                                     "model.layers.3.mlp.experts.gate_up_proj", "model.layers.3.mlp.experts.down_proj"]
    peft_model = apply_lora(model, cfg)
    layers = peft_model.base_model.model.model.layers
    assert [isinstance(layer.mlp.experts, LoraLayer) for layer in layers] == [False, True, False, True]


def test_the_placement_check_catches_bare_expert_names_reaching_every_layer():
    from peft import LoraConfig, get_peft_model

    from aletheia.lora import verify_adapters

    cfg = LoraConfig(r=2, lora_dropout=0.0, target_modules=["q_proj"], layers_to_transform=[1, 3],
                     layers_pattern="layers", target_parameters=["mlp.experts.gate_up_proj"])
    with pytest.raises(AletheiaError, match=r"unexpected adapters \[\(0, 'mlp.experts.gate_up_proj'\)"):
        verify_adapters(get_peft_model(build(*MIXTRAL), cfg), cfg)


def test_moe_attention_only_keeps_dropout_and_leaves_the_experts_alone():
    model = build(*MIXTRAL)
    cfg = aletheia_lora_config(get_architecture(model), [0], AdapterConfig(modules="attention"))
    assert not cfg.target_parameters and cfg.lora_dropout == 0.05
    peft_model = apply_lora(model, cfg)
    assert not any(getattr(m, "parameter_name", None) for m in peft_model.modules() if isinstance(m, LoraLayer))


def test_gpt2_conv1d_layers_get_fan_in_fan_out():
    model = build("GPT2Config", GPT_STYLE)
    cfg = aletheia_lora_config(get_architecture(model), [0])
    assert cfg.fan_in_fan_out is True
    assert aletheia_lora_config(get_architecture(build("LlamaConfig", KV)), [0]).fan_in_fan_out is False


# --- architectures outside the registry ---------------------------------------------------------

class ToyBlock(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.wx, self.wy = torch.nn.Linear(width, width), torch.nn.Linear(width, width)

    def forward(self, h):
        return h + self.wy(torch.tanh(self.wx(h)))


class ToyLM(torch.nn.Module):
    """A causal LM whose module names say nothing about attention or MLP."""

    def __init__(self, layers: int = 3, width: int = 16, vocab: int = 128):
        super().__init__()
        self.config = transformers.PretrainedConfig()
        self.config.model_type = "toy"
        self.embed = torch.nn.Embedding(vocab, width)
        self.trunk = torch.nn.ModuleList(ToyBlock(width) for _ in range(layers))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids=None, labels=None, **kwargs):
        h = self.embed(input_ids)
        for block in self.trunk:
            h = block(h)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return transformers.modeling_outputs.CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, *args, **kwargs):  # PEFT's causal-LM wrapper asks for it
        return {}


def test_generic_fallback_sorts_linear_layers_by_name():
    arch = get_architecture(build("PhiConfig", {}))  # Phi-1/2: not in the registry
    assert (arch.family, arch.blocks_path) == ("generic", "model.layers")
    assert arch.attention == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense")
    assert arch.mlp == ("mlp.fc1", "mlp.fc2")


def test_unknown_names_fail_with_what_was_found_and_the_options():
    with pytest.raises(AletheiaError) as err:
        get_architecture(ToyLM())
    message = str(err.value)
    for part in ("'toy'", "trunk", "3 x ToyBlock", "wx, wy", "--attention-modules", "--mlp-modules", "--blocks-path"):
        assert part in message


def test_module_names_given_by_hand_drive_probe_and_placement():
    model = ToyLM()
    arch = resolve_architecture(model, attention=["wx"], mlp=["wy"])
    assert (arch.family, arch.blocks_path) == ("custom", "trunk")
    set_architecture(model, arch)
    assert len(run_probe(model, [as_batch(token_items(2))], progress=False).scores) == 3
    peft_model = apply_lora(model, aletheia_lora_config(arch, [0, 2], AdapterConfig(attention_rank=2, mlp_rank=4)))
    assert placed_adapters(peft_model, "trunk", 1) == {(0, "wx"): 2, (0, "wy"): 4, (2, "wx"): 2, (2, "wy"): 4}
    with pytest.raises(AletheiaError, match="match no linear layer.*wx, wy"):
        resolve_architecture(ToyLM(), attention=["q_proj"], mlp=["wy"])


def test_module_names_from_the_command_line_land_in_the_config():
    from aletheia.cli import build_config

    cfg = build_config(None, blocks_path="trunk", attention_modules="wx", mlp_modules="wy, wz")
    assert cfg.architecture.to_dict() == {"blocks_path": "trunk", "attention_modules": ["wx"],
                                          "mlp_modules": ["wy", "wz"]}


def test_every_registered_family_and_model_type_is_in_the_table():
    assert {f[3] for f in FAMILIES} - {"generic"} == set(ARCHITECTURES)
    tested = {getattr(transformers, f[1])().model_type for f in FAMILIES}
    assert {t for a in ARCHITECTURES.values() for t in a.model_types} <= tested


def test_readme_lists_the_registry():
    """The README's architecture table is ``supported_table()``; regenerate it when the registry changes."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert supported_table() in readme.read_text()


# --- the loss every stage uses ------------------------------------------------------------------

LOSS_CASES = FAMILIES + [("mixtral with router loss", "MixtralConfig",
                          {**KV, "num_local_experts": 4, "num_experts_per_tok": 2, "output_router_logits": True,
                           "router_aux_loss_coef": 0.5}, "mixtral")]


@pytest.mark.parametrize("case", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_head_on_scored_positions_gives_hf_loss_and_gradients(case):
    """``causal_lm_loss`` runs the output head only where a label is scored and matches HF's loss."""
    _, config_class, extra, _ = case
    model = build(config_class, extra).eval()  # no dropout: both losses see the same network
    items = token_items(3, length=12, seed=5)
    items[1] = {"input_ids": items[1]["input_ids"][:7], "labels": items[1]["labels"][:7]}  # shorter: padded
    batch = next(train_batches(items, 3, seed=0, pad_id=2))
    scored = int((batch["labels"][:, 1:] != -100).sum())
    assert scored < batch["labels"].numel() - 3  # prompt and padding positions are left out

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    hf_loss, hf_grads = loss_and_grads(lambda: model(**batch).loss)
    head_rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(a[0].shape[:-1]))
    ours, our_grads = loss_and_grads(lambda: causal_lm_loss(model, batch))
    hook.remove()
    assert head_rows == [torch.Size([scored])]  # the head ran on the scored positions only
    assert torch.allclose(ours, hf_loss, atol=1e-6)
    assert hf_grads.keys() == our_grads.keys() and hf_grads
    for name, grad in hf_grads.items():
        assert torch.allclose(our_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_a_head_reached_outside_its_module_still_gets_the_hf_loss():
    """The fallback: no output-embedding module to gather at, so the full logits are indexed instead."""
    model = build("LlamaConfig", KV).eval()
    batch = next(train_batches(token_items(3, seed=7), 3, seed=0, pad_id=2))
    hf_loss = model(**batch).loss
    model.get_output_embeddings = lambda: None
    assert torch.allclose(causal_lm_loss(model, batch), hf_loss, atol=1e-6)
