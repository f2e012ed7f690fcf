"""Shared fixtures: tiny random models built from config classes, tiny datasets. Nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class CharTokenizer:
    """Just enough of a HF tokenizer for tiny models: one id per byte, no chat template."""

    chat_template = None
    bos_token, eos_token, pad_token = "<s>", "</s>", "</s>"
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2
    padding_side = "right"

    def __call__(self, text, add_special_tokens=True, return_tensors=None, padding=False):
        if isinstance(text, list):
            rows = [self(t, add_special_tokens)["input_ids"] for t in text]
            if return_tensors:
                width = max(map(len, rows))
                ids = torch.full((len(rows), width), self.pad_token_id)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, r in enumerate(rows):
                    sl = slice(width - len(r), width) if self.padding_side == "left" else slice(0, len(r))
                    ids[i, sl] = torch.tensor(r)
                    mask[i, sl] = 1
                return _Batch(input_ids=ids, attention_mask=mask)
            return {"input_ids": rows}
        text = text.replace(self.bos_token, "\x01").replace(self.eos_token, "\x02")
        ids = [min(b, 127) if b >= 3 else b for b in text.encode("utf-8")]
        if add_special_tokens:
            ids = [self.bos_token_id] + ids
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) < 3)]
        return bytes(i for i in ids).decode("utf-8", errors="replace")


class _Batch(dict):
    def __getattr__(self, name):
        return self[name]

    def to(self, device):
        return _Batch({k: v.to(device) for k, v in self.items()})


def tiny_llama(num_layers: int = 4, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                  max_position_embeddings=512, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    cfg = LlamaConfig(**{**kwargs, **overrides})
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model


@pytest.fixture
def tokenizer():
    return CharTokenizer()


@pytest.fixture
def tiny_model():
    return tiny_llama()


def alpaca_records(n: int = 40) -> list[dict]:
    return [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(n)]


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(alpaca_records()))
    return path


def save_tiny_model(path: Path) -> Path:
    """A tiny Llama saved with a real (byte-level BPE) tokenizer, loadable by path like a user's model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, ch in enumerate(sorted(set(
            " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:#?!'\n-+=*/()[]{}_\"<>|"))):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    model = tiny_llama()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved with a real (byte-level BPE) tokenizer, loadable by path like a user's model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def run_cli(args, capsys):
    """``aletheia ARGS`` in this process: (exit code, stdout, stderr)."""
    from aletheia.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


@pytest.fixture
def nan_model_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with NaN weights: every loss it produces is non-finite (like Pythia in fp16)."""
    import shutil

    from transformers import AutoModelForCausalLM

    path = tmp_path / "nan-llama"
    shutil.copytree(tiny_model_dir, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(path)
    return path
