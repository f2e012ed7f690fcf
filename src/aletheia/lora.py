"""Selective LoRA (paper §3.4) as a plain PEFT ``LoraConfig``, and a check that PEFT placed it right.

PEFT silently skips target modules it cannot match, so after ``get_peft_model`` we compare the
adapters that exist against the ones we asked for (layer, module, rank) and fail loudly on any gap.
"""

from __future__ import annotations

import re

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

from .architectures import Architecture
from .config import AdapterConfig
from .errors import AletheiaError


def aletheia_lora_config(
    arch: Architecture, layers: list[int], adapter: AdapterConfig | None = None
) -> LoraConfig:
    """LoRA on the attention and MLP modules of ``layers`` only, with asymmetric ranks."""
    a = adapter or AdapterConfig()
    if not layers:
        raise AletheiaError("no layers selected: selective LoRA needs at least one layer")
    attn, mlp = list(arch.attention), list(arch.mlp)
    targets = arch.target_modules(a.modules)
    base_rank = a.mlp_rank if a.modules == "mlp" else a.attention_rank
    rank_pattern, alpha_pattern = {}, {}
    if a.modules == "both" and a.mlp_rank != a.attention_rank:
        for name in mlp:
            rank_pattern[name] = a.mlp_rank
            alpha_pattern[name] = a.alpha_ratio * a.mlp_rank
    del attn
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=base_rank,
        lora_alpha=a.alpha_ratio * base_rank,
        lora_dropout=a.dropout,
        target_modules=targets,
        layers_to_transform=sorted(layers),
        layers_pattern=arch.layers_pattern,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
    )


def standard_lora_config(arch: Architecture, num_layers: int, adapter: AdapterConfig | None = None) -> LoraConfig:
    """The baseline: attention + MLP of every layer, one rank (r=16, alpha=32 by default)."""
    a = adapter or AdapterConfig()
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=a.standard_rank,
        lora_alpha=a.alpha_ratio * a.standard_rank,
        lora_dropout=a.dropout,
        target_modules=arch.target_modules("both"),
        layers_to_transform=list(range(num_layers)),
        layers_pattern=arch.layers_pattern,
        bias="none",
    )


def expected_adapters(config: LoraConfig) -> dict[tuple[int, str], int]:
    """(layer, module) -> rank that ``config`` asks for."""
    out = {}
    for layer in config.layers_to_transform:
        for name in config.target_modules:
            out[(layer, name)] = config.rank_pattern.get(name, config.r)
    return out


def found_adapters(model: nn.Module, layers_pattern: str, adapter_name: str = "default") -> dict[tuple[int, str], int]:
    """(layer, module) -> rank of every LoRA layer actually present in ``model``."""
    from peft.tuners.lora import LoraLayer

    pattern = re.compile(rf"(?:^|\.){re.escape(layers_pattern)}\.(\d+)\.")
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in getattr(module, "r", {}):
            m = pattern.search(name)
            layer = int(m.group(1)) if m else -1
            out[(layer, name.rsplit(".", 1)[-1])] = module.r[adapter_name]
    return out


def verify_adapters(model: nn.Module, config: LoraConfig) -> None:
    """Raise if the adapters in ``model`` differ from what ``config`` asked for."""
    want = expected_adapters(config)
    got = found_adapters(model, config.layers_pattern if isinstance(config.layers_pattern, str)
                         else config.layers_pattern[0])
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing adapters {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected adapters {extra[:6]}{' ...' if len(extra) > 6 else ''}")
        if wrong:
            parts.append("wrong ranks " + ", ".join(f"{k}: {got[k]} != {want[k]}" for k in wrong[:6]))
        raise AletheiaError("PEFT placed the adapters differently than requested: " + "; ".join(parts))


def apply_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """``get_peft_model`` plus the placement check."""
    peft_model = get_peft_model(model, config)
    verify_adapters(peft_model, config)
    return peft_model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
