"""Aletheia: gradient-guided layer-selective LoRA fine-tuning.

The library API, in the order of the algorithm::

    from aletheia import load_model_and_tokenizer, run_probe, top_fraction, aletheia_lora_config

    model, tok = load_model_and_tokenizer()              # embedded SmolLM2-135M-Instruct
    scores = run_probe(model, batches).scores           # per-layer gradient norms
    layers = top_fraction(scores, 0.5)                  # the paper's top-50% rule
    lora = aletheia_lora_config(get_architecture(model), layers)   # a plain peft.LoraConfig
"""

from . import selectors  # noqa: F401 - registers the comparison selectors in SELECTORS
from .architectures import ARCHITECTURES, Architecture, get_architecture, get_blocks
from .config import AdapterConfig, DataConfig, ProbeConfig, RunConfig, TrainConfig
from .data import probe_batches, tokenize_examples
from .errors import AletheiaError, ConfigError
from .examples import load_examples, read_examples
from .fetch import fetch_default_model
from .lm_loss import causal_lm_loss
from .lora import aletheia_lora_config, apply_lora, standard_lora_config, verify_adapters
from .models import load_model_and_tokenizer
from .probe import ProbeResult, run_probe
from .selection import SELECTORS, Selection, SelectionContext, register_selector, select_layers, top_fraction
from .train import train_lora

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "Architecture", "get_architecture", "get_blocks",
    "AdapterConfig", "DataConfig", "ProbeConfig", "RunConfig", "TrainConfig",
    "load_examples", "probe_batches", "read_examples", "tokenize_examples",
    "AletheiaError", "ConfigError",
    "causal_lm_loss",
    "aletheia_lora_config", "apply_lora", "standard_lora_config", "verify_adapters",
    "fetch_default_model", "load_model_and_tokenizer",
    "ProbeResult", "run_probe",
    "SELECTORS", "Selection", "SelectionContext", "register_selector", "select_layers", "top_fraction",
    "train_lora",
]
