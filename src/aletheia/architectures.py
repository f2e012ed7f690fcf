"""Architecture registry: where the decoder blocks are and which modules are attention / MLP.

One ``Architecture`` entry per family, registered in ``ARCHITECTURES`` (a ``Registry``). Module
names are the names PEFT matches in ``target_modules``: a leaf name (``q_proj``) or, where a leaf
name is ambiguous, the path inside the block (GPT-2's ``attn.c_proj`` vs ``mlp.c_proj``).
``layers_pattern`` is the name of the ModuleList holding the blocks, which PEFT needs to read layer
indices reliably.

Mixture-of-experts blocks (Mixtral in transformers 5) keep their experts as fused 3-D parameters, not
``nn.Linear`` modules; ``experts`` names those parameters and ``lora.py`` reaches them with PEFT
``target_parameters``.

A model whose ``config.model_type`` is not registered goes through ``infer_architecture``: the
outermost, longest ``ModuleList`` of identical blocks, with its linear layers sorted into attention
and MLP by their names. Module names can also be given by hand (``resolve_architecture``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from .errors import AletheiaError
from .registry import Registry
from .tables import markdown_table


@dataclass(frozen=True)
class Architecture:
    family: str
    model_types: tuple[str, ...]
    """``config.model_type`` values this entry covers."""
    blocks_path: str
    """Dotted path from the CausalLM to the ModuleList of decoder blocks."""
    attention: tuple[str, ...]
    """Attention linear modules (PEFT ``target_modules`` names)."""
    mlp: tuple[str, ...]
    """MLP linear modules (PEFT ``target_modules`` names); empty for MoE blocks."""
    experts: tuple[str, ...] = ()
    """Fused 3-D expert weights inside a block (e.g. ``mlp.experts.gate_up_proj``), adapted through
    PEFT ``target_parameters``. They count as the MLP group."""
    fan_in_fan_out: bool = False
    """True for GPT-2 style ``Conv1D`` layers, whose weight is stored (in, out)."""
    examples: str = ""
    """Model names the entry is meant for (documentation only)."""
    packed_attention: bool = False
    """True where transformers' code for the family keeps packed examples apart (``position_ids``
    restarting at 0, no attention mask) exactly: ``tests/test_padding_free.py`` checks each such
    family. False (a generic or hand-named model) keeps padded batches (``packing.py``)."""

    @property
    def layers_pattern(self) -> str:
        return self.blocks_path.rsplit(".", 1)[-1]

    def target_modules(self, modules: str = "both") -> list[str]:
        if modules == "attention":
            return list(self.attention)
        if modules == "mlp":
            return list(self.mlp)
        return list(self.attention) + list(self.mlp)

    def target_parameters(self, layers: list[int], modules: str = "both") -> list[str]:
        """Full paths of the expert parameters of ``layers``, e.g. ``model.layers.1.mlp.experts.down_proj``.

        Full paths because PEFT 0.21 applies ``target_parameters`` to every layer and ignores
        ``layers_to_transform``; a path names exactly one layer.
        """
        if modules == "attention":
            return []
        return [f"{self.blocks_path}.{i}.{p}" for i in sorted(layers) for p in self.experts]


LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")

ARCHITECTURES: Registry[Architecture] = Registry("architecture family")
"""The known families by name, in the README table's order."""

for _arch in (
    Architecture("llama", ("llama",), "model.layers", LLAMA_ATTN, LLAMA_MLP,
                 examples="TinyLlama, Llama-2/3.x, SmolLM2, Yi", packed_attention=True),
    Architecture("mistral", ("mistral",), "model.layers", LLAMA_ATTN, LLAMA_MLP,
                 examples="Mistral-7B", packed_attention=True),
    Architecture("qwen2", ("qwen2", "qwen3"), "model.layers", LLAMA_ATTN, LLAMA_MLP,
                 examples="Qwen2, Qwen2.5, Qwen3", packed_attention=True),
    Architecture("phi3", ("phi3",), "model.layers", ("qkv_proj", "o_proj"),
                 ("gate_up_proj", "down_proj"), examples="Phi-3, Phi-3.5", packed_attention=True),
    Architecture("stablelm", ("stablelm",), "model.layers", LLAMA_ATTN, LLAMA_MLP,
                 examples="StableLM-2", packed_attention=True),
    Architecture("gptj", ("gptj",), "transformer.h", ("q_proj", "k_proj", "v_proj", "out_proj"),
                 ("fc_in", "fc_out"), examples="GPT-J-6B", packed_attention=True),
    Architecture("mixtral", ("mixtral",), "model.layers", LLAMA_ATTN, (),
                 experts=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                 examples="Mixtral-8x7B", packed_attention=True),
    Architecture("gpt_neox", ("gpt_neox",), "gpt_neox.layers",
                 ("query_key_value", "attention.dense"), ("dense_h_to_4h", "dense_4h_to_h"),
                 examples="Pythia, GPT-NeoX-20B", packed_attention=True),
    Architecture("olmo", ("olmo", "olmo2", "olmo3"), "model.layers", LLAMA_ATTN, LLAMA_MLP,
                 examples="OLMo, OLMo-2", packed_attention=True),
    Architecture("gemma", ("gemma", "gemma2", "gemma3_text"), "model.layers", LLAMA_ATTN,
                 LLAMA_MLP, examples="Gemma, Gemma-2, Gemma-3 (text)", packed_attention=True),
    Architecture("gpt2", ("gpt2",), "transformer.h", ("attn.c_attn", "attn.c_proj"),
                 ("mlp.c_fc", "mlp.c_proj"), fan_in_fan_out=True, examples="GPT-2, DistilGPT2",
                 packed_attention=True),
):
    ARCHITECTURES.register(_arch.family, _arch)
del _arch


OVERRIDE_HINT = (
    "pass the module names by hand: --blocks-path, --attention-modules and --mlp-modules on the "
    "command line, or architecture.blocks_path / attention_modules / mlp_modules in the YAML config"
)


def _base_model(model: nn.Module) -> nn.Module:
    """Unwrap a PeftModel (and a DDP wrapper) to the underlying transformers model."""
    if isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__.endswith("DataParallel"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def model_type_of(model: nn.Module) -> str | None:
    return getattr(getattr(_base_model(model), "config", None), "model_type", None)


def set_architecture(model: nn.Module, arch: Architecture) -> None:
    """Pin ``arch`` to ``model`` so the probe and the adapter placement both use it."""
    _base_model(model).aletheia_architecture = arch


def get_architecture(model: nn.Module) -> Architecture:
    """The architecture pinned to ``model``, else the registry entry, else the generic fallback."""
    base = _base_model(model)
    pinned = getattr(base, "aletheia_architecture", None)
    if isinstance(pinned, Architecture):
        return pinned
    model_type = model_type_of(model)
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    arch = infer_architecture(model)
    base.aletheia_architecture = arch  # cache: the search walks every module
    return arch


def resolve_architecture(
    model: nn.Module,
    blocks_path: str | None = None,
    attention: list[str] | tuple[str, ...] | None = None,
    mlp: list[str] | tuple[str, ...] | None = None,
) -> Architecture:
    """The architecture of ``model`` with any hand-given names replacing the found ones.

    The missing parts come from the registry entry, else the generic search (whose block list is
    used even when it cannot sort the linear layers). Hand-given names are checked against the model.
    """
    if blocks_path is None and attention is None and mlp is None:
        return get_architecture(model)
    model_type = model_type_of(model) or type(_base_model(model)).__name__
    found = next((a for a in ARCHITECTURES.values() if model_type in a.model_types), None)
    if found is None:
        try:
            found = infer_architecture(model, blocks_path)
        except AletheiaError:
            path = blocks_path or find_blocks(model)[0]
            found = Architecture("custom", (model_type,), path, (), ())
    arch = replace(
        found,
        family="custom" if found.family == "generic" else found.family,
        blocks_path=blocks_path or found.blocks_path,
        attention=tuple(attention) if attention is not None else found.attention,
        mlp=tuple(mlp) if mlp is not None else found.mlp,
    )
    _check_names(model, arch)
    return arch


def _check_names(model: nn.Module, arch: Architecture) -> None:
    """Every hand-given name must match a linear layer in the first block, else list what exists."""
    linears = _linear_names(get_blocks(model, arch)[0])
    if not arch.attention and not arch.mlp and not arch.experts:
        raise AletheiaError(f"no attention or MLP modules given for '{arch.blocks_path}'; {OVERRIDE_HINT}")
    bad = [n for n in (*arch.attention, *arch.mlp) if not any(_matches(path, n) for path in linears)]
    if bad:
        raise AletheiaError(
            f"module name(s) {bad} match no linear layer in {arch.blocks_path}.0; "
            f"its linear layers are: {', '.join(linears) or 'none'}"
        )


def get_blocks(model: nn.Module, arch: Architecture | None = None) -> nn.ModuleList:
    """The ModuleList of decoder blocks, in depth order."""
    arch = arch or get_architecture(model)
    module = _resolve_path(_base_model(model), arch.blocks_path, arch.family)
    if not isinstance(module, nn.ModuleList):
        raise AletheiaError(f"{arch.family}: '{arch.blocks_path}' is not a ModuleList of blocks")
    return module


def _resolve_path(root: nn.Module, path: str, family: str) -> nn.Module:
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            lists = ", ".join(f"{n} ({len(m)})" for n, m in _module_lists(root)) or "none"
            raise AletheiaError(
                f"{family}: expected decoder blocks at '{path}' but '{part}' is missing; "
                f"ModuleLists in the model: {lists}"
            )
        module = getattr(module, part)
    return module


def num_layers(model: nn.Module) -> int:
    return len(get_blocks(model))


# --- generic fallback ---------------------------------------------------------------------------

ATTENTION_WORDS = ("attn", "attention")
MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward", "ff")
ATTENTION_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj", "query", "key",
                    "value", "query_key_value", "c_attn", "wq", "wk", "wv", "wo", "wqkv")
MLP_LEAVES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "fc_in", "fc_out",
              "w1", "w2", "w3", "c_fc", "dense_h_to_4h", "dense_4h_to_h")


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a linear layer with a transposed weight
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _linear_names(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if n and _is_linear(m)]


def _matches(path: str, name: str) -> bool:
    """PEFT's rule for a ``target_modules`` list entry: equal, or a suffix at a dot boundary."""
    return path == name or path.endswith("." + name)


def _module_lists(root: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in root.named_modules() if n and isinstance(m, nn.ModuleList) and len(m)]


def _classify(path: str) -> str | None:
    """``attention``, ``mlp`` or None for a linear layer's path inside a block, by its names."""
    *parents, leaf = path.lower().split(".")
    for part in parents:
        if any(w in part for w in ATTENTION_WORDS):
            return "attention"
        if any(part == w or part.startswith(w) or part.endswith(w) for w in MLP_WORDS):
            return "mlp"
    if leaf in ATTENTION_LEAVES:
        return "attention"
    if leaf in MLP_LEAVES:
        return "mlp"
    return None


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The block list: at ``blocks_path``, else the longest of the outermost ``ModuleList``s whose
    entries all share one class (lists nested in a block, such as experts, do not compete)."""
    base = _base_model(model)
    model_type = model_type_of(model) or type(base).__name__
    lists = _module_lists(base)
    found = ", ".join(f"{n} ({len(m)} x {type(m[0]).__name__})" for n, m in lists) or "none"
    if blocks_path is not None:
        blocks = _resolve_path(base, blocks_path, model_type)
        if not isinstance(blocks, nn.ModuleList):
            raise AletheiaError(f"'{blocks_path}' is not a ModuleList (ModuleLists: {found}); {OVERRIDE_HINT}")
        return blocks_path, blocks
    uniform = [(n, m) for n, m in lists if len({type(b) for b in m}) == 1]
    outer = [(n, m) for n, m in uniform if not any(n.startswith(o + ".") for o, _ in uniform)]
    if not outer:
        raise AletheiaError(
            f"unknown architecture '{model_type}': no ModuleList of identical blocks found "
            f"(ModuleLists: {found}); {OVERRIDE_HINT}"
        )
    return max(outer, key=lambda nm: len(nm[1]))  # the first of the longest


def infer_architecture(model: nn.Module, blocks_path: str | None = None) -> Architecture:
    """Find the blocks (``find_blocks``) and sort their linear layers into attention and MLP by
    name, or explain why not."""
    model_type = model_type_of(model) or type(_base_model(model)).__name__
    blocks_path, blocks = find_blocks(model, blocks_path)
    names = _linear_names(blocks[0])
    groups: dict[str, list[str]] = {"attention": [], "mlp": [], None: []}
    for path in names:
        groups[_classify(path)].append(path)
    different = [i for i, b in enumerate(blocks) if _linear_names(b) != names]
    problem = None
    if not names:
        problem = f"the blocks at '{blocks_path}' hold no linear layers"
    elif groups[None]:
        problem = f"cannot tell whether {groups[None]} are attention or MLP"
    elif not groups["attention"] or not groups["mlp"]:
        problem = "found no " + ("attention" if not groups["attention"] else "MLP") + " layers"
    elif different:
        problem = f"blocks {different[:5]} have other linear layers than block 0"
    if problem:
        raise AletheiaError(
            f"unknown architecture '{model_type}': {problem}; blocks: '{blocks_path}' "
            f"({len(blocks)} x {type(blocks[0]).__name__}), linear layers in block 0: "
            f"{', '.join(names) or 'none'}; {OVERRIDE_HINT}"
        )
    conv1d = type(blocks[0].get_submodule(names[0])).__name__ == "Conv1D"  # of the first linear layer
    return Architecture("generic", (model_type,), blocks_path, tuple(groups["attention"]),
                        tuple(groups["mlp"]), fan_in_fan_out=conv1d)


def supported_table() -> str:
    """The README's table of registered families and their module names (Markdown)."""
    rows = []
    for a in ARCHITECTURES.values():
        mlp = ", ".join(f"`{m}`" for m in a.mlp)
        if a.experts:
            mlp = ", ".join(f"`{e}`" for e in a.experts) + " (3-D expert parameters)"
        if a.fan_in_fan_out:
            mlp += " (Conv1D)"
        rows.append([a.family, ", ".join(a.model_types), a.examples, f"`{a.blocks_path}`",
                     ", ".join(f"`{m}`" for m in a.attention), mlp])
    return markdown_table(["Family", "`model_type`", "Examples", "Blocks", "Attention modules", "MLP modules"],
                          rows, "llllll")
