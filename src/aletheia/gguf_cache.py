"""Checkpoints converted from GGUF, kept in the cache: dequantised once, staged, moved in whole.

A GGUF file (an embedded model's, assembled from its wheels, or a user's ``--model x.gguf``) is
read by transformers (with the ``gguf`` package), dequantised to float32 and saved as a plain
safetensors checkpoint with its tokenizer. ``convert_into`` stages that beside the target under a
lock and moves it in with one rename, so the cache holds a whole checkpoint or none, whatever kills
the process, and parallel workers convert once. A user's file is keyed by its sha256
(``convert_gguf``): the same bytes under another name reuse the same checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import AletheiaError
from .utils import cache_dir, package_versions, read_json, write_json

GGUF_MAGIC = b"GGUF"


# What a truncated or corrupt GGUF raises inside transformers' and gguf's readers.
_GGUF_READ_ERRORS = (struct.error, ValueError, EOFError, OSError, KeyError, IndexError,
                     UnicodeDecodeError)


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def load_gguf(path: Path, dtype: torch.dtype):
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


def convert_into(target: Path, staging_prefix: str, build, force: bool = False) -> bool:
    """Run ``build(tmp, staged)`` under the cache lock and move ``staged`` to ``target`` with one rename,
    so the cache holds a whole checkpoint or none, whatever kills the process. False when another
    process converted it while we waited for the lock."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent) as locked:
        if is_checkpoint(target) and not force:
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


def save_converted(gguf: Path, staged: Path) -> None:
    """Dequantise ``gguf`` to float32 (its exact values, so a run in any dtype sees the same weights as
    loading the GGUF itself) and save it with its tokenizer as a plain checkpoint in ``staged``."""
    model, tokenizer = load_gguf(gguf, torch.float32)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    del model


GGUF_SOURCE_FILE = "aletheia-gguf.json"  # in each checkpoint converted from a user's GGUF file
CONVERTERS = ("transformers", "gguf", "torch")  # whose versions a converted checkpoint records


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise AletheiaError(f"cannot read model file {path} ({exc.strerror})") from None
    return digest.hexdigest()


def _read_gguf_source(folder: Path) -> dict:
    return read_json(folder / GGUF_SOURCE_FILE) or {}


def _converted_for(root: Path, stamp: dict) -> Path | None:
    """A checkpoint already converted from this very file (same path, size and mtime): reused without
    hashing the file again, which a multi-GB GGUF would make slow on every run."""
    for folder in sorted(root.glob("*/")):
        if stamp in _read_gguf_source(folder).get("files", []) and is_checkpoint(folder):
            return folder
    return None


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


def gguf_file_problem(path: Path) -> str | None:
    """Why the ``.gguf`` file ``path`` cannot load (None: it can). No weights read: what the file
    system says, the GGUF magic bytes and the header."""
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


def convert_gguf(path: str | Path) -> Path:
    """The cached checkpoint converted from the GGUF file ``path``, converting it first if needed.

    A run's ``adapter_config.json`` then names this folder, which ``AutoModelForCausalLM.from_pretrained``
    loads, where the GGUF's parent folder would not. The folder (``cache_dir()/models/gguf/STEM-SHA``)
    is keyed by the file's sha256, so two different files never share one and a copy reuses it; a file
    seen before (same path, size, mtime) is not hashed again. It is staged and moved in with one
    rename, like an embedded model.
    """
    path = Path(path).expanduser().resolve()
    problem = gguf_file_problem(path)  # missing, not a GGUF, truncated: one line
    if problem:
        raise AletheiaError(problem)
    root = cache_dir() / "models" / "gguf"
    st = os.stat(path)
    stamp = {"gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    found = _converted_for(root, stamp)
    if found is not None:
        return found
    sha = _file_sha256(path)
    same_bytes = [p for p in sorted(root.glob(f"*-{sha[:16]}")) if is_checkpoint(p)]  # a copy, renamed
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
        save_converted(path, staged)
        _write_gguf_source(staged, sha, [stamp])

    if is_checkpoint(target) or not convert_into(target, f".convert-{target.name}-", build):
        files = _read_gguf_source(target).get("files", [])  # the same bytes under another path or mtime
        _write_gguf_source(target, sha, [*files, stamp])
    return target


def _write_gguf_source(folder: Path, sha: str, files: list[dict]) -> None:
    """Record the GGUF's hash and every file (path, size, mtime) known to hold exactly those bytes."""
    write_json(folder / GGUF_SOURCE_FILE,
               {"gguf_sha256": sha, "files": files, "converted_with": package_versions(CONVERTERS)})
