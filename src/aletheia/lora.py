"""Selective LoRA (paper §3.4) as a plain PEFT ``LoraConfig``, and a check that PEFT placed it right.

PEFT silently skips target modules it cannot match, so after ``get_peft_model`` we compare the
adapters that exist against the ones we asked for (layer, module, rank) and fail loudly on any gap.

Mixture-of-experts blocks: the experts of transformers-5 Mixtral are fused 3-D parameters, which PEFT
reaches through ``target_parameters``. PEFT 0.21 applies those to every layer regardless of
``layers_to_transform``, so we name each selected layer's expert parameters by full path.
PEFT cannot apply dropout to a parameter adapter, so such a config uses ``lora_dropout=0``.
"""

from __future__ import annotations

import re
import sys
import warnings

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

from .architectures import Architecture
from .config import AdapterConfig
from .errors import AletheiaError


def _dropout(arch: Architecture, targets_parameters: bool, dropout: float) -> float:
    if targets_parameters and dropout:
        print(f"aletheia: {arch.family}: LoRA dropout {dropout} -> 0 (PEFT cannot apply dropout to the "
              "3-D expert parameters)", file=sys.stderr)
        return 0.0
    return dropout


def aletheia_lora_config(
    arch: Architecture, layers: list[int], adapter: AdapterConfig | None = None
) -> LoraConfig:
    """LoRA on the attention and MLP modules of ``layers`` only, with asymmetric ranks."""
    a = adapter or AdapterConfig()
    if not layers:
        raise AletheiaError("no layers selected: selective LoRA needs at least one layer")
    parameters = arch.target_parameters(layers, a.modules)
    base_rank = a.mlp_rank if a.modules == "mlp" else a.attention_rank
    split = a.modules == "both" and a.mlp_rank != a.attention_rank  # MLP and experts off the base rank
    patterned = list(arch.mlp) + list(arch.experts) if split else []
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=base_rank,
        lora_alpha=a.alpha_ratio * base_rank,
        lora_dropout=_dropout(arch, bool(parameters), a.dropout),
        target_modules=arch.target_modules(a.modules),
        target_parameters=parameters or None,
        layers_to_transform=sorted(layers),
        layers_pattern=arch.layers_pattern,
        rank_pattern=dict.fromkeys(patterned, a.mlp_rank),
        alpha_pattern=dict.fromkeys(patterned, a.alpha_ratio * a.mlp_rank),
        fan_in_fan_out=arch.fan_in_fan_out,
        bias="none",
    )


def standard_lora_config(arch: Architecture, num_layers: int, adapter: AdapterConfig | None = None) -> LoraConfig:
    """The baseline: attention + MLP of every layer, one rank (r=16, alpha=32 by default)."""
    a = adapter or AdapterConfig()
    parameters = arch.target_parameters(list(range(num_layers)))
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=a.standard_rank,
        lora_alpha=a.alpha_ratio * a.standard_rank,
        lora_dropout=_dropout(arch, bool(parameters), a.dropout),
        target_modules=arch.target_modules("both"),
        target_parameters=parameters or None,
        layers_to_transform=list(range(num_layers)),
        layers_pattern=arch.layers_pattern,
        fan_in_fan_out=arch.fan_in_fan_out,
        bias="none",
    )


def _layers_pattern(config: LoraConfig) -> str:
    lp = config.layers_pattern
    return lp if isinstance(lp, str) else lp[0]


def _in_block(path: str, layers_pattern: str) -> tuple[int, str]:
    """(layer index, path inside the block) of a module or parameter path; layer -1 outside blocks."""
    m = re.search(rf"(?:^|\.){re.escape(layers_pattern)}\.(\d+)\.", path)
    if not m:
        return -1, path
    return int(m.group(1)), path[m.end():]


def _rank(config: LoraConfig, name: str) -> int:
    for key, rank in config.rank_pattern.items():  # PEFT's rule: the key matches the name's tail
        if re.match(rf"(.*\.)?({key})$", name):
            return rank
    return config.r


def expected_adapters(config: LoraConfig) -> dict[tuple[int, str], int]:
    """(layer, module) -> rank that ``config`` asks for; expert parameters count as modules."""
    out = {}
    for layer in config.layers_to_transform:
        for name in config.target_modules or ():
            out[(layer, name)] = _rank(config, name)
    for path in config.target_parameters or ():
        layer, name = _in_block(path, _layers_pattern(config))
        out[(layer, name)] = _rank(config, name)
    return out


def _target_names(config: LoraConfig) -> list[str]:
    names = list(config.target_modules or ())
    names += [_in_block(p, _layers_pattern(config))[1] for p in config.target_parameters or ()]
    return names


def found_adapters(
    model: nn.Module, layers_pattern: str, adapter_name: str = "default", targets: list[str] | None = None
) -> dict[tuple[int, str], int]:
    """(layer, module) -> rank of every LoRA layer actually present in ``model``.

    A module is named by its leaf (``q_proj``), or with ``targets`` by the target name it matches
    (``attn.c_proj``); a parameter adapter by its path inside the block (``mlp.experts.down_proj``).
    """
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in getattr(module, "r", {}):
            path = name.replace(".base_layer", "")  # nested wrappers (two parameters of one module)
            param = getattr(module, "parameter_name", None)
            layer, inner = _in_block(path + (f".{param}" if param else ""), layers_pattern)
            key = inner if param else path.rsplit(".", 1)[-1]
            if targets is not None:
                key = next((t for t in targets if inner == t or inner.endswith("." + t)), inner)
            out[(layer, key)] = module.r[adapter_name]
    return out


def verify_adapters(model: nn.Module, config: LoraConfig) -> None:
    """Raise if the adapters in ``model`` differ from what ``config`` asked for."""
    want = expected_adapters(config)
    got = found_adapters(model, _layers_pattern(config), targets=_target_names(config))
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
    with warnings.catch_warnings():
        if config.target_parameters:
            # PEFT 0.21 checks rank_pattern keys against target_modules only and warns about the
            # expert keys, although it applies them; verify_adapters checks every rank below.
            warnings.filterwarnings("ignore", message=r"The following (rank|alpha)_pattern keys did not match")
        peft_model = get_peft_model(model, config)
    verify_adapters(peft_model, config)
    return peft_model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
