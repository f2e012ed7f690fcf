"""``aletheia eval``: load the base model once, evaluate it and each adapter from that same load.

PEFT's ``disable_adapter()`` gives exactly the base model, so base and fine-tuned results come from
one set of weights in memory and differ only by the adapter. Writes ``eval.json`` with every metric,
the exact questions, the settings, the time of each benchmark and the package versions.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import AletheiaError
from ..models import load_model_and_tokenizer
from ..outputs import check_file_output
from ..recipe import log
from ..utils import git_revision, package_versions, read_json, resolve_device, timestamp, write_json
from .forgetting import forgetting_report, forgetting_table
from .suite import EvalConfig, run_suite

VERSION_PACKAGES = ("aletheia", "torch", "transformers", "peft", "lm_eval", "datasets")


def _is_eval_result(path: Path) -> bool:
    data = read_json(path)
    return isinstance(data, dict) and {"results", "settings", "model_path"} <= set(data)


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def check_adapter(folder: Path) -> Path:
    """Refuse an adapter folder whose files cannot load (broken config, missing, garbage or unsafe
    weights) with one line, before the base model is loaded."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AletheiaError(f"{folder / 'adapter_config.json'} is not a readable JSON file "
                            f"({exc}); pass an adapter folder written by aletheia train") from None
    if not isinstance(config, dict):
        raise AletheiaError(f"{folder / 'adapter_config.json'} must hold a JSON object")
    st, binary = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(st), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 - any failure to read the header: unusable
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AletheiaError(f"{st} is not a valid safetensors file ({first}); the adapter is "
                                "corrupt: train it again") from None
    elif binary.is_file():
        import warnings

        try:
            with warnings.catch_warnings():  # torch warns on the way to refusing: one line is ours
                warnings.simplefilter("ignore")
                torch.load(binary, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - refused or unreadable: either way unusable
            raise AletheiaError(f"{binary} cannot be loaded safely as plain tensors (torch's "
                                "weights-only loader refused it: pickled Python objects, or not a "
                                "checkpoint at all); it is not an adapter written by aletheia "
                                "train") from None
    else:
        raise AletheiaError(f"{folder} holds adapter_config.json but no adapter weights "
                            "(adapter_model.safetensors); the run did not finish: train it again")
    return folder


def find_adapters(path: str | Path) -> dict[str, Path]:
    """A run folder (``{name: folder}``), or a ``compare`` folder holding ``standard/`` and ``aletheia/``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise AletheiaError(f"adapter folder not found: {p} (pass a run folder written by aletheia train/compare)")
    if _is_adapter(p):
        return {"adapter": check_adapter(p)}
    found = {name: check_adapter(p / name) for name in ("standard", "aletheia") if _is_adapter(p / name)}
    if not found:
        raise AletheiaError(f"{p} holds no adapter (adapter_config.json); pass a run folder from aletheia train "
                            "or a compare folder with standard/ and aletheia/")
    return found


def run_config_of(folder: Path) -> RunConfig | None:
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            return RunConfig.from_yaml(candidate)
    return None


def check_data(cfg: EvalConfig) -> None:
    """Find every benchmark's data before loading a model, so a missing file fails in a second."""
    from .mmlu import prepare_mmlu
    from .sources import load_gsm8k, load_humaneval

    if "mmlu" in cfg.tasks:
        prepare_mmlu(cfg)
    if "gsm8k" in cfg.tasks:
        load_gsm8k(cfg.gsm8k_path, cfg.cache_dir, cfg.hub, cfg.pypi)
    if "humaneval" in cfg.tasks and cfg.allow_code_execution:
        load_humaneval(cfg.humaneval_path, cfg.cache_dir, cfg.hub, cfg.pypi)


def evaluate_models(
    model: str | None, adapters: dict[str, Path], cfg: EvalConfig, progress: bool = True,
    device: str | None = None, log=print,
) -> dict[str, Any]:
    """Results of the base model and of each adapter, all from a single load of the base weights."""
    check_data(cfg)
    dev = resolve_device(device)
    base, tokenizer = load_model_and_tokenizer(model, dtype=torch.float32 if dev.type == "cpu" else torch.bfloat16,
                                               device=dev)
    base.config.use_cache = True  # generation reuses the KV cache
    source = base.aletheia_source
    results: dict[str, Any] = {}
    lm = base
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        current = adapters[names[0]]
        try:
            lm = PeftModel.from_pretrained(base, str(current), adapter_name=names[0])
            for name in names[1:]:
                current = adapters[name]
                lm.load_adapter(str(current), adapter_name=name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # corrupt, or another model's
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AletheiaError(f"could not load the adapter in {current}: {first[:200]} "
                                f"(was it trained on {source}?)") from None
    tasks = list(cfg.tasks)
    log(f"evaluating base model {source} on {', '.join(tasks)}")
    with lm.disable_adapter() if adapters else nullcontext():
        results["base"] = run_suite(lm, tokenizer, tasks, cfg, progress)
    for name, folder in adapters.items():
        lm.set_adapter(name)
        log(f"evaluating adapter '{name}' ({folder})")
        results[name] = run_suite(lm, tokenizer, tasks, cfg, progress)
    return {"model_path": source, "results": results}


def summary_line(name: str, res: dict[str, Any]) -> str:
    parts = []
    if "mmlu" in res and res["mmlu"].get("accuracy") is not None:
        parts.append(f"MMLU {res['mmlu']['accuracy']:.1%} (n={res['mmlu']['n']}, {res['mmlu']['shots']}-shot)")
    if "gsm8k" in res and res["gsm8k"].get("strict_match") is not None:
        g = res["gsm8k"]
        parts.append(f"GSM8K strict {g['strict_match']:.1%} flexible {g['flexible_extract']:.1%} (n={g['n']})")
    if "humaneval" in res:
        h = res["humaneval"]
        parts.append(f"HumanEval pass@1 {h['pass@1']:.1%} (n={h['n']})" if h.get("pass@1") is not None
                     else "HumanEval skipped (needs --allow-code-execution)")
    if "heldout" in res:
        parts.append(f"held-out loss {res['heldout']['loss']:.4f}")
    times = ", ".join(f"{t} {r['seconds']:.0f}s" for t, r in res.items() if isinstance(r, dict) and "seconds" in r)
    return f"{name}: " + "; ".join(parts) + f"  [{times}]"


def run_eval(
    model: str | None, adapter: str | None, cfg: EvalConfig, output: str | Path = "eval.json",
    progress: bool = True, device: str | None = None, data_given: bool = False, overwrite: bool = False,
) -> dict[str, Any]:
    """``aletheia eval``: evaluate, write ``output`` (eval.json), print one line per model.

    ``output`` may replace an earlier eval result, but no other file unless ``overwrite``."""
    cfg.validate()
    check_file_output(output, _is_eval_result, overwrite)
    resolve_device(device)
    adapters = find_adapters(adapter) if adapter else {}
    if adapters:
        run_cfg = run_config_of(next(iter(adapters.values())))
        if run_cfg is not None:
            model = model if model is not None else run_cfg.model
            if not data_given:  # reproduce the run's own held-out split
                cfg.data, cfg.data_seed = run_cfg.data, run_cfg.seed
    if "humaneval" in cfg.tasks and not cfg.allow_code_execution:
        log("HumanEval skipped: it executes model-written code; add --allow-code-execution to run it in the sandbox")
    start = time.perf_counter()
    ev = evaluate_models(model, adapters, cfg, progress, device, log)
    out = {
        "model": model or "default", "model_path": ev["model_path"],
        "adapters": {k: str(v) for k, v in adapters.items()},
        "settings": cfg.to_dict(), "results": ev["results"],
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(resolve_device(device)), "torch_threads": torch.get_num_threads(),
        "versions": package_versions(VERSION_PACKAGES), "git_revision": git_revision(),
        "finished_at": timestamp(),
    }
    if adapters:
        out["forgetting"] = forgetting_report(ev["results"])
    write_json(output, out)
    for name, res in ev["results"].items():
        print(summary_line(name, res))
    if adapters:
        print("\n" + forgetting_table(out["forgetting"], list(ev["results"])))
    print(f"wrote {output}")
    return out


def evaluate_compare(run_cfg: RunConfig, folder: Path, cfg: EvalConfig, progress: bool = True,
                     device: str | None = None, final: Path | None = None) -> dict[str, Any]:
    """``compare --eval``: base, standard and Aletheia from one load; writes ``folder/eval.json``.

    ``final``: where ``folder`` (a staging folder) will be moved, for the paths recorded."""
    cfg.data, cfg.data_seed = run_cfg.data, run_cfg.seed  # held-out loss on the runs' own split
    cfg.validate()
    adapters = {"standard": folder / "standard", "aletheia": folder / "aletheia"}
    start = time.perf_counter()
    ev = evaluate_models(run_cfg.model, adapters, cfg, progress, device, log)
    report = forgetting_report(ev["results"])
    names = list(ev["results"])
    write_json(folder / "eval.json", {
        "model": run_cfg.model or "default", "model_path": ev["model_path"],
        "adapters": {k: str((final or folder) / k) for k in adapters}, "settings": cfg.to_dict(),
        "results": ev["results"], "forgetting": report, "seconds": round(time.perf_counter() - start, 1),
        "versions": package_versions(VERSION_PACKAGES), "git_revision": git_revision(),
    })
    return {"forgetting": report, "table": forgetting_table(report, names),
            "markdown": forgetting_table(report, names, markdown=True)}
