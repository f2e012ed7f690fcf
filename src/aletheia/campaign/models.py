"""Tiny random models a campaign can name as ``random:FAMILY[:LAYERS]``, built offline.

They exist so a campaign (and its tests) can cover several architecture families on a laptop: the
speed and selection machinery is exercised for real, the numbers say nothing about real models.
Size (documented, fixed): hidden 64, MLP 128, 4 attention heads (2 key/value heads), ``LAYERS``
decoder blocks (default 8), a character-level vocabulary of about 100 tokens, weights drawn with
seed 0. Each is saved once, with its tokenizer, under ``CAMPAIGN/models/`` and loaded by path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..architectures import ARCHITECTURES
from ..embedded import embedded_model
from ..errors import AletheiaError
from .spec import _RANDOM_RE, ModelSpec

RANDOM_SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 1024}
RANDOM_LAYERS = 8
_CHARS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;#?!'\n-+=*/()[]{}_\"<>|%$&@^~`\\"


def char_tokenizer():
    """A character-level fast tokenizer (no download): one token per character, ``</s>`` pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *_CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")


def build_random_model(family: str, layers: int = RANDOM_LAYERS, seed: int = 0):
    """A randomly initialised causal LM of a registered family, with the documented tiny size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in ARCHITECTURES:
        raise AletheiaError(f"random:{family}: unknown family; registered: {', '.join(sorted(ARCHITECTURES))}")
    tokenizer = char_tokenizer()
    model_type = ARCHITECTURES[family].model_types[0]
    try:
        config = AutoConfig.for_model(
            model_type, num_hidden_layers=layers, vocab_size=len(tokenizer), pad_token_id=2,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **RANDOM_SIZE)
    except ValueError as exc:
        raise AletheiaError(f"random:{family}: transformers cannot build a '{model_type}' config ({exc})") from None
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config), tokenizer


def materialize_model(spec: ModelSpec, campaign_dir: str | Path) -> str:
    """What ``load_model_and_tokenizer`` should load for this model: a saved folder for random models
    (built once, atomically, so parallel workers never see half a checkpoint), the embedded model's
    name (None for ``default``) once it is in the cache, else the id itself. The runner calls this
    for every model before any run starts, so an embedded model is fetched there, once."""
    if spec.id and (embedded := embedded_model(spec.id)) is not None:
        from ..models import fetch_model

        fetch_model(embedded.name)  # instant when cached; a failed fetch stops the campaign, one line
        return None if spec.id == "default" else embedded.name  # type: ignore[return-value]
    if not (m := _RANDOM_RE.match(spec.id or "")):  # random:qwen2:6 -> qwen2, 6 layers
        return spec.id
    family, layers = m.group(1), int(m.group(2) or RANDOM_LAYERS)
    target = Path(campaign_dir) / "models" / f"random-{family}-{layers}L"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_random_model(family, layers)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        staged = Path(tmp) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            os.replace(staged, target)
        except OSError:  # another worker won the race: its copy is identical (ours goes with tmp)
            if not (target / "config.json").is_file():
                raise
    return str(target)
