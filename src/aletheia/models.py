"""Loading causal LMs: hub ids, local folders, GGUF files and the embedded models.

``resolve_model_path`` turns ``--model`` into something ``from_pretrained`` loads: an embedded
model's name becomes its cached checkpoint (``fetch.py``), a ``.gguf`` file its converted checkpoint
(``gguf_cache.py``), a folder or hub id stays as it is. ``model_path_problem`` says what is wrong
with one before anything loads; ``load_model_and_tokenizer`` loads it with the run's dtype,
quantisation and device map.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .embedded import EMBEDDED_MODELS, embedded_model
from .errors import AletheiaError
from .fetch import fetch_model
from .gguf_cache import convert_gguf, gguf_file_problem

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` is surely meant as a local path rather than a hub id (``org/name``)."""
    return (model.startswith((".", "/", "~")) or model.endswith(".gguf") or model.count("/") > 1
            or "//" in model or (os.sep != "/" and os.sep in model)
            or ("/" in model and not _HUB_ID.match(model)))


def model_path_problem(model: str) -> str | None:
    """Why ``model`` cannot load as a local path (None: it can, or it is a hub id). No network, no
    weights read: just what the file system says, plus the GGUF magic bytes."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return gguf_file_problem(path)
    if path.exists():
        if not (path / "config.json").is_file():
            return (f"model folder {path} has no config.json; pass a folder saved with "
                    "save_pretrained, a .gguf file or a hub id")
        return None
    if looks_like_path(model):
        return f"model path not found: {model} (pass an existing folder, a .gguf file or a hub id)"
    return None


def resolve_model_path(model: str | None) -> str:
    """Turn the user's ``--model`` into something ``from_pretrained`` can load. An embedded model's
    name (``smollm2-135m``, ``gemma3-270m``; None or ``default``: SmolLM2) wins over a folder of that
    name in the working directory: pass ``./NAME`` for the folder."""
    entry = embedded_model(model)
    if entry is not None:
        return str(fetch_model(entry.name))
    assert model is not None
    problem = model_path_problem(model)
    if problem:
        raise AletheiaError(problem)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path))
    return str(path) if path.exists() else model  # else a hub id such as "Qwen/Qwen2.5-0.5B"


def check_quantize(quantize: str | None, device: torch.device | str) -> None:
    """Refuse 4-bit loading early, with the reason, where it cannot work."""
    if quantize is None:
        return
    if quantize != "4bit":
        raise AletheiaError(f"--quantize {quantize} is unknown; use 4bit (QLoRA) or leave it out")
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise AletheiaError(
            "--quantize 4bit (QLoRA) needs a CUDA GPU: bitsandbytes' NF4 kernels do not run on "
            f"{'this machine (no CUDA device found)' if not torch.cuda.is_available() else str(device)}; "
            "drop --quantize to train in full precision, or run on a GPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AletheiaError("--quantize 4bit needs the bitsandbytes package: pip install bitsandbytes") from None


def quantization_config(quantize: str | None):
    """QLoRA's recipe: NF4 weights, double quantisation, bf16 compute."""
    if quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def enable_gradient_checkpointing(model) -> None:
    """Recompute block activations in backward. Non-reentrant checkpointing lets gradients reach the
    block weights (probe) and the adapters (training) without making the inputs require grad."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_model_and_tokenizer(
    model: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    **kwargs,
):
    """Load a causal LM and its tokenizer; make sure the tokenizer can pad.

    ``quantize="4bit"``: QLoRA loading plus PEFT's k-bit preparation (CUDA only).
    ``device_map`` (in kwargs): spread the model over several GPUs instead of moving it to ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_quantize(quantize, device)
    if quantize:
        kwargs["quantization_config"] = quantization_config(quantize)
        kwargs.setdefault("device_map", {"": torch.device(device)})
    source = resolve_model_path(model)  # a .gguf file becomes its converted checkpoint in the cache
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("" if "/" in source else
                f" (embedded models: {', '.join(EMBEDDED_MODELS.names())})")  # a mistyped name
        raise AletheiaError(f"could not load model '{source}': {first}{hint}") from None
    except ValueError as exc:
        if "Unrecognized" in str(exc) or "does not recognize" in str(exc):
            raise AletheiaError(f"could not load model '{source}': {str(exc).splitlines()[0]}") from None
        raise
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if "device_map" not in kwargs:
        lm.to(device)
    lm.config.use_cache = False  # training and probing never reuse the KV cache
    if quantize:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing,
                                             gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    lm.aletheia_source = source
    return lm, tokenizer
