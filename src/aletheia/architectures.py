"""Architecture registry: where the decoder blocks are and which linear modules are attention / MLP.

One ``Architecture`` entry per family. Module names are the leaf names PEFT matches in
``target_modules`` (e.g. ``q_proj``); ``layers_pattern`` is the name of the ModuleList holding the
blocks, which PEFT needs to read layer indices reliably.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .errors import AletheiaError


@dataclass(frozen=True)
class Architecture:
    family: str
    model_types: tuple[str, ...]
    """``config.model_type`` values this entry covers."""
    blocks_path: str
    """Dotted path from the CausalLM to the ModuleList of decoder blocks."""
    attention: tuple[str, ...]
    mlp: tuple[str, ...]

    @property
    def layers_pattern(self) -> str:
        return self.blocks_path.rsplit(".", 1)[-1]

    def target_modules(self, modules: str = "both") -> list[str]:
        if modules == "attention":
            return list(self.attention)
        if modules == "mlp":
            return list(self.mlp)
        return list(self.attention) + list(self.mlp)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.family] = arch
    return arch


LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")

register(Architecture("llama", ("llama",), "model.layers", LLAMA_ATTN, LLAMA_MLP))
register(Architecture("mistral", ("mistral",), "model.layers", LLAMA_ATTN, LLAMA_MLP))
register(Architecture("qwen2", ("qwen2", "qwen3"), "model.layers", LLAMA_ATTN, LLAMA_MLP))


def _base_model(model: nn.Module) -> nn.Module:
    """Unwrap a PeftModel to the underlying transformers model."""
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def get_architecture(model: nn.Module) -> Architecture:
    """The registry entry for ``model`` (by ``config.model_type``), or a clear error."""
    model_type = getattr(getattr(_base_model(model), "config", None), "model_type", None)
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    known = sorted(t for a in ARCHITECTURES.values() for t in a.model_types)
    raise AletheiaError(
        f"unknown architecture '{model_type}'; supported model types: {', '.join(known)}"
    )


def get_blocks(model: nn.Module, arch: Architecture | None = None) -> nn.ModuleList:
    """The ModuleList of decoder blocks, in depth order."""
    arch = arch or get_architecture(model)
    module: nn.Module = _base_model(model)
    for part in arch.blocks_path.split("."):
        if not hasattr(module, part):
            raise AletheiaError(
                f"{arch.family}: expected decoder blocks at '{arch.blocks_path}' but '{part}' is missing"
            )
        module = getattr(module, part)
    if not isinstance(module, nn.ModuleList):
        raise AletheiaError(f"{arch.family}: '{arch.blocks_path}' is not a ModuleList of blocks")
    return module


def num_layers(model: nn.Module) -> int:
    return len(get_blocks(model))
