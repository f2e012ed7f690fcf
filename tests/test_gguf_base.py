"""A `.gguf` base model is converted once into the cache, so the run's adapter names a loadable folder.

The GGUF is written here with the `gguf` package's own writer from a tiny random Qwen2 (no download).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from aletheia import gguf_cache
from aletheia.errors import AletheiaError

gguf = pytest.importorskip("gguf")

PROMPT = torch.tensor([[256, 75, 78, 220, 86]])


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=258, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=257, eos_token_id=257)
    return Qwen2ForCausalLM(cfg).eval()


def write_gguf(model, path: Path) -> Path:
    """``model`` as an F32 GGUF with a byte-level BPE vocabulary (256 bytes, one merge, one special)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list([*bytes_to_unicode().values(), "he", "<|endoftext|>"])
    writer.add_token_types([gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL])
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(257)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for key, value in model.state_dict().items():
        if key != "lm_head.weight":  # tied: a GGUF without output.weight means tied embeddings
            writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), value.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ALETHEIA_CACHE", str(root))
    return root


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    (tmp_path / "user").mkdir()
    return write_gguf(tiny_qwen2(), tmp_path / "user" / "tiny.gguf")


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=PROMPT).logits


def converted(cache: Path) -> list[str]:
    root = cache / "models" / "gguf"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_gguf_run_names_a_base_that_from_pretrained_loads(cache, gguf_file, alpaca_file, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--model", str(gguf_file), "--data", str(alpaca_file), "--steps", "2",
                            "--lr", "1e-2", "-o", str(run), "--batch-size", "2", "--max-length", "64",
                            "--batches", "1", "--quiet"], capsys)
    assert code == 0, err
    base = Path(json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"])
    assert base.parent == cache / "models" / "gguf" and base.name.startswith("tiny-")
    loaded = AutoModelForCausalLM.from_pretrained(base)  # a plain folder: no gguf_file, no Aletheia
    assert torch.equal(logits(loaded), logits(tiny_qwen2()))  # F32 weights survive the conversion exactly
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == str(gguf_file) and summary["model_path"] == str(base)
    tuned = PeftModel.from_pretrained(loaded, str(run))
    assert not torch.equal(logits(tuned), logits(tiny_qwen2()))  # the adapter trained and applies


def test_a_gguf_converts_once_and_two_files_never_share_a_folder(cache, gguf_file, tmp_path, monkeypatch):
    calls = []
    real = gguf_cache.load_gguf

    def counting(path, dtype):
        calls.append(path)
        return real(path, dtype)
    monkeypatch.setattr(gguf_cache, "load_gguf", counting)
    first = gguf_cache.convert_gguf(gguf_file)
    assert gguf_cache.convert_gguf(gguf_file) == first and len(calls) == 1  # reused: no second conversion
    copy = tmp_path / "elsewhere.gguf"
    shutil.copy(gguf_file, copy)
    assert gguf_cache.convert_gguf(copy) == first and len(calls) == 1  # same bytes, same checkpoint
    other = write_gguf(tiny_qwen2(seed=1), tmp_path / "user" / "other.gguf")
    second = gguf_cache.convert_gguf(other)
    assert second != first and len(calls) == 2
    assert converted(cache) == sorted([first.name, second.name])  # no staging folder is left behind
    # the same file rewritten with other weights (new mtime) is hashed again and converted anew
    write_gguf(tiny_qwen2(seed=2), gguf_file)
    os.utime(gguf_file, ns=(1, 1))
    third = gguf_cache.convert_gguf(gguf_file)
    assert third not in (first, second) and len(calls) == 3


def test_a_kill_during_conversion_leaves_no_half_model(cache, gguf_file, monkeypatch):
    real = gguf_cache.load_gguf

    def interrupted(path, dtype):
        raise KeyboardInterrupt
    monkeypatch.setattr(gguf_cache, "load_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.convert_gguf(gguf_file)
    assert converted(cache) == []
    # a SIGKILL gives no chance to clean up: its staging folder stays until the next conversion
    name = f"tiny-{hashlib.sha256(gguf_file.read_bytes()).hexdigest()[:16]}"
    (cache / "models" / "gguf" / f".convert-{name}-killed" / "checkpoint").mkdir(parents=True)
    monkeypatch.setattr(gguf_cache, "load_gguf", real)
    assert gguf_cache.convert_gguf(gguf_file).name == name and converted(cache) == [name]


@pytest.mark.parametrize("content, expected", [
    (None, "model file not found"),
    (b"this is not a gguf file at all", "is not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00\x01", "could not read GGUF file"),
])
def test_bad_gguf_input_is_one_line_and_caches_nothing(cache, tmp_path, content, expected):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AletheiaError) as err:
        gguf_cache.convert_gguf(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert converted(cache) == []
