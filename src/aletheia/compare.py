"""``aletheia compare``, the main job: probe once, then standard LoRA and Aletheia, paired.

Both methods get the same seed, data, split and steps; Aletheia reuses the single probe result.
Writes ``comparison.json``, ``comparison.md``, ``probe.json`` and ``probe_scores.png`` at the top of
the output folder, and one run folder per method below it.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import distributed
from .config import RunConfig
from .plots import plot_loss_curves, plot_probe_scores
from .recipe import evaluate, log, prepare, probe_and_select, run_training
from .runs import RunFolder, RunRecord, finished_run, read_record, unfinished_run
from .selection import read_probe_json, write_probe_json
from .tables import markdown_table, text_table
from .utils import atomic_write_text, write_json

ROWS = [  # (label, key, format)
    ("train time (s)", "train_seconds", "{:.1f}"),
    ("median step (s)", "median_step_seconds", "{:.3f}"),
    ("tokens / s", "tokens_per_second", "{:.0f}"),
    ("adapted layers", "n_selected", "{}"),
    ("trainable params", "trainable_params", "{:,}"),
    ("held-out loss before", "eval_loss_before", "{:.4f}"),
    ("held-out loss after", "eval_loss", "{:.4f}"),
    ("accuracy before", "accuracy_before", "{:.1%}"),
    ("accuracy after", "accuracy", "{:.1%}"),
    ("peak memory (MiB)", "peak_memory_mib", "{:.0f}"),
]


def _fmt(fmt: str, value) -> str:
    return "n/a" if value is None else fmt.format(value)


def comparison_table(std: RunRecord, ale: RunRecord, markdown: bool = False) -> str:
    """The side-by-side table printed by ``compare`` (plain text, or Markdown)."""
    def cells(r: RunRecord) -> dict:
        return {**r.to_dict(), "n_selected": len(r.selected_layers or []),
                "peak_memory_mib": r.peak_memory_bytes / 2**20 if r.peak_memory_bytes else None}

    s, a = cells(std), cells(ale)
    rows = [(label, _fmt(f, s.get(k)), _fmt(f, a.get(k))) for label, k, f in ROWS]
    speedup = std.train_seconds / ale.train_seconds if ale.train_seconds else float("nan")
    rows.append(("speedup (std / ale time)", "1.00x", f"{speedup:.2f}x"))
    head = ("", "standard LoRA", "Aletheia")
    return markdown_table(head, rows) if markdown else text_table(head, rows)


def run_compare(cfg: RunConfig, progress: bool = True, device: str | None = None, overwrite: bool = False,
                eval_cfg=None, resume: bool = False) -> dict:
    """``eval_cfg`` (an ``EvalConfig``): also benchmark base, standard and Aletheia (forgetting table).

    ``resume``: continue an interrupted compare: a finished method is kept, an unfinished one
    continues from its newest checkpoint, and Aletheia trains the layers the first probe chose."""
    cfg.validate()
    main = distributed.is_main_process()  # under torchrun / accelerate launch only process 0 writes
    folder = RunFolder(cfg.output, overwrite, kind="compare", active=main, resume=resume)
    with folder as staging:  # both runs are staged; the folder is swapped in only when all is done
        comparison = _compare_into(staging, cfg, progress, device, eval_cfg, main, resume)
        folder.commit()
    table, forgetting = comparison.pop("table"), comparison.pop("forgetting_table", None)
    if main:
        out = Path(cfg.output)
        print(table + (f"\n\n{forgetting}" if forgetting else ""))
        print(f"\nboth methods trained {comparison['steps']} optimizer steps\n"
              f"run folders: {out / 'standard'}  {out / 'aletheia'}   summary: {out / 'comparison.md'}")
    return comparison


def _train_or_reuse(cfg: RunConfig, selection, progress: bool, device: str | None, baseline: dict,
                    resume: bool) -> RunRecord:
    """One method of the pair; on resume, a finished one is read back and an unfinished one continues."""
    out = Path(cfg.output)
    if resume and finished_run(out) is not None and (record := read_record(out / "summary.json")):
        log(f"{cfg.method}: already finished in {out}, kept")
        return record
    has_checkpoint = resume and unfinished_run(out) is not None and any(out.glob(".partial/checkpoints/step-*"))
    return run_training(cfg, selection=selection, progress=progress, device=device, baseline=baseline,
                        overwrite=resume, resume=has_checkpoint)


def _compare_into(out: Path, cfg: RunConfig, progress: bool, device: str | None, eval_cfg, main: bool,
                  resume: bool = False) -> dict:
    # probe once on the base model and measure it before any training
    ws = prepare(cfg, device)
    recorded = resume and (out / "probe.json").is_file()
    selection = read_probe_json(out / "probe.json") if recorded else probe_and_select(cfg, ws, progress)
    log(f"evaluating the base model on {len(ws.eval_items)} held-out examples")
    baseline = evaluate(cfg, ws, ws.model, progress)
    if main and not recorded:
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        write_probe_json(out / "probe.json", selection, model_path=ws.model_path, seed=cfg.seed)
        plot_probe_scores(selection, out / "probe_scores.png", title=Path(ws.model_path).name)
    del ws

    # the paired runs: same seed, data, split and steps
    std = _train_or_reuse(cfg.replace(method="standard", output=str(out / "standard")), None, progress,
                          device, baseline, resume)
    ale = _train_or_reuse(cfg.replace(method="aletheia", output=str(out / "aletheia")), selection, progress,
                          device, baseline, resume)

    comparison = {
        "model": std.model, "model_path": std.model_path, "seed": cfg.seed, "steps": std.steps,
        "selected_layers": selection.layers, "num_layers": selection.num_layers,
        "probe_seconds": selection.seconds,
        "speedup": std.train_seconds / ale.train_seconds if ale.train_seconds else None,
        "standard": std.to_dict(), "aletheia": ale.to_dict(), "table": comparison_table(std, ale),
    }
    md = (f"# Aletheia vs standard LoRA\n\nModel `{std.model_path}`, seed {cfg.seed}, "
          f"{std.steps} steps each, probe {selection.seconds:.1f}s, selected layers "
          f"{selection.layers} of {selection.num_layers}.\n\n"
          + comparison_table(std, ale, markdown=True)
          + "\n\n![probe scores](probe_scores.png)\n")
    if not main:
        return comparison
    curves = {m: _records(out / m / "metrics.jsonl") for m in ("standard", "aletheia")}
    if all(curves.values()):  # the PNG users want: both runs' loss vs step and vs wall-clock seconds
        plot_loss_curves(curves, out / "loss_curves.png", title=f"{Path(std.model_path).name}: "
                         "standard LoRA vs Aletheia")
        md += "\n![loss curves](loss_curves.png)\n"
    if eval_cfg is not None:
        from .evaluation.run import evaluate_compare

        ev = evaluate_compare(cfg, out, eval_cfg, progress, device, final=Path(cfg.output))
        comparison.update(forgetting=ev["forgetting"], forgetting_table=ev["table"])
        md += "\n## Forgetting (benchmarks, base vs fine-tuned)\n\n" + ev["markdown"] + "\n"
    write_json(out / "comparison.json", {k: v for k, v in comparison.items()
                                          if k not in ("table", "forgetting_table")})
    atomic_write_text(out / "comparison.md", md)
    return comparison


def _records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
