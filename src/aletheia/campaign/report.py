"""``aletheia report CAMPAIGN_DIR``: the paper's tables and figures, rebuilt from results.csv and the runs.

Writes ``REPORT.md`` (speedup per model with 95% CI and p-value, MMLU forgetting, multi-benchmark
deltas, compute-matched, layer budget, failures), ``FORGETTING_DELTAS_ANALYSIS.md``,
``COMPUTE_MATCHED_ANALYSIS.md`` and PNG figures in ``figures/``. Nothing here is typed in by hand:
every number comes from ``results.csv`` (itself rebuilt from the run records) or the probe files.

Size: over 400 lines because every table and document reads the one ``Campaign`` view of the
results and shares its formatting; the figures are in ``figures.py``, the statistics in ``stats.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import AletheiaError, ConfigError
from ..stats import mean_sd, paired_test, summarize
from ..tables import finite as _ok
from ..tables import markdown_table
from ..tables import num as _f
from ..tables import p_value as _p
from ..utils import atomic_write_text, read_json
from ..yaml_io import load_yaml_file
from . import figures
from .results import BENCHMARKS, EXTRA, read_results_csv, write_results_csv
from .spec import CampaignSpec

BENCH_NAMES = {"mmlu": "MMLU", "gsm8k": "GSM8K", "humaneval": "HumanEval"}
SAME_STEPS = {"aletheia": "Aletheia", "cost_aware": "Cost-aware Aletheia"}
"""Recipes trained for the standard run's steps, each paired with it in the speed and quality tables."""


# --- formatting ------------------------------------------------------------------------------------


def _msd(values, fmt: str = "{:.2f}") -> str:
    mean, sd = mean_sd(values)
    if not _ok(mean):
        return "—"
    sd_fmt = fmt.replace("+", "").replace("%", "").replace("pp", "")
    return fmt.format(mean) + (f" ± {sd_fmt.format(sd)}" if _ok(sd) else "")


def _ci(x, fmt: str = "{:.2f}") -> str:
    """The confidence interval of ``x`` (a ``Summary`` or ``PairedTest``) as ``[low, high]``."""
    return f"[{_f(x.ci_low, fmt)}, {_f(x.ci_high, fmt)}]"


def _params(n) -> str:
    if not _ok(n):
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


# --- data ------------------------------------------------------------------------------------------

class Campaign:
    """results.csv rows with the lookups the tables need."""

    def __init__(self, campaign_dir: Path, rows: list[dict]):
        self.dir, self.rows = campaign_dir, rows
        self.models = list(dict.fromkeys(r["model"] for r in rows))
        self.spec = _read_yaml(campaign_dir / "campaign.yaml")

    def select(self, **where) -> list[dict]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]

    def ok(self, **where) -> list[dict]:
        return [r for r in self.select(**where) if r["status"] == "completed"]

    def pairs(self, model: str, recipe: str) -> list[tuple[dict, dict]]:
        """(standard row, recipe row) per seed where both completed."""
        rows = self.ok(model=model, recipe=recipe)
        std = [self.ok(model=model, seed=r["seed"], recipe="standard") for r in rows]
        return [(s[0], r) for s, r in zip(std, rows) if s]

    def first(self, model: str, key: str):
        return next((r[key] for r in self.select(model=model) if r.get(key) is not None), None)

    def has_benchmark(self, bench: str) -> bool:
        return any(_ok(r.get(f"{bench}_ft")) for r in self.rows)

    def benchmark_reason(self) -> str:
        """Why benchmark columns are empty, from the runs' own notes (never guessed)."""
        wanted = (self.spec or {}).get("eval", {}).get("benchmarks") or []
        if not wanted:
            return "the campaign's eval.benchmarks list is empty (held-out loss only)"
        # an unreadable record is skipped, as in load_records
        records = [read_json(p) or {} for p in sorted((self.dir / "runs").glob("*/record.json"))]
        notes = [n for r in records for n in r.get("notes") or [] if n.startswith("benchmarks not measured")]
        return notes[0] if notes else "no completed run has benchmark scores yet"

    def probe_scores(self, model: str) -> list[tuple[list[float], list[int]]]:
        """(normalised scores, selected layers) of each seed's probe for ``model``."""
        files = sorted((self.dir / "shared" / model).glob("seed-*/probe.json"))
        if not files:
            files = sorted(p / "probe.json" for p in (self.dir / "runs").glob(f"{model}__seed*__aletheia__*"))
        probes = [json.loads(path.read_text()) for path in files if path.is_file()]
        return [(d["normalized_scores"], d["selected_layers"]) for d in probes]

    @property
    def same_steps(self) -> list[str]:
        """The same-steps recipes this campaign ran (``SAME_STEPS``), in that order."""
        return [r for r in SAME_STEPS if self.select(recipe=r)]

    @property
    def default_budget(self) -> float | None:
        return next((r["budget"] for r in self.select(recipe="aletheia")), None)


def _read_yaml(path: Path) -> dict | None:
    """The campaign's saved spec as a mapping (None when absent: results.csv alone still reports).

    A broken one is refused with one line rather than half-used: the report's tables need its
    models, recipes and settings to be what the campaign ran."""
    if not path.exists():
        return None
    try:
        data = load_yaml_file(path, "campaign spec")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        CampaignSpec.from_dict(data).validate()
    except ConfigError as exc:
        msg = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        raise AletheiaError(f"{msg}; fix it, or copy the spec the campaign was run with to {path}") from None
    return data


# --- tables ----------------------------------------------------------------------------------------

def speedup_table(c: Campaign, recipe: str = "aletheia") -> tuple[str, dict]:
    rows, all_std, all_ale, per_model = [], [], [], {}
    for m in c.models:
        if pairs := c.pairs(m, recipe):
            std, ale = [s["train_seconds"] for s, _ in pairs], [a["train_seconds"] for _, a in pairs]
            sp = [a["speedup_pct"] for _, a in pairs]
            test, summ = paired_test(std, ale), summarize(sp)
            per_model[m] = (summ, test, sp)
            all_std += std
            all_ale += ale
            rows.append([m, _msd(std), _msd(ale), _msd(sp, "{:.1f}"), _ci(summ, "{:.1f}"),
                         _msd([a["time_ratio"] for _, a in pairs], "{:.3f}"), _p(test.p),
                         f"{sum(x > 0 for x in sp)}/{len(sp)}"])
    overall = paired_test(all_std, all_ale)
    if not rows:
        return f"_No completed standard/{recipe} pair yet._", {"per_model": per_model, "overall": overall}
    sp_all = [x for _, _, sp in per_model.values() for x in sp]
    rows.append(["**Overall**", _msd(all_std), _msd(all_ale), _msd(sp_all, "{:.1f}"),
                 _ci(summarize(sp_all), "{:.1f}"), _f(float(np.mean(all_std) / np.mean(all_ale)), "{:.3f}"),
                 _p(overall.p), f"{sum(x > 0 for x in sp_all)}/{len(sp_all)}"])
    head = ["Model", "Std time (s)", "Ale time (s)", "Speedup (%)", "95% CI (%)", "Ratio", "p-value", "Wins"]
    text = (f"{markdown_table(head, rows)}\n\nOverall paired t-test over all {overall.n} (model, seed) pairs "
            f"of training times: t = {_f(overall.t)}, df = {overall.df}, p = {_p(overall.p)}, Cohen's d = "
            f"{_f(overall.cohen_d)}, win rate {_f(overall.win_rate * 100, '{:.0f}')}% (mean time saved "
            f"{_f(overall.mean_diff)} s per run, 95% CI {_ci(overall)} s).")
    return text, {"per_model": per_model, "overall": overall}


def mmlu_table(c: Campaign, recipe: str = "aletheia") -> str:
    """The paper's Table 3; with per-question answers, each seed's McNemar p (standard vs this)."""
    if not c.has_benchmark("mmlu"):
        return f"_MMLU not measured: {c.benchmark_reason()}._"
    rows, mcnemar = [], any(_ok(r.get("mmlu_mcnemar_p")) for r in c.rows)
    for m in c.models:
        pairs = c.pairs(m, recipe)
        if not pairs or not any(_ok(a.get("mmlu_ft")) for _, a in pairs):
            continue
        rows.append([m, _msd([s["mmlu_base"] for s, _ in pairs], "{:.1f}%"),
                     _msd([s["mmlu_ft"] for s, _ in pairs], "{:.1f}%"),
                     _msd([s["mmlu_delta"] for s, _ in pairs], "{:+.1f}pp"),
                     _msd([a["mmlu_ft"] for _, a in pairs], "{:.1f}%"),
                     _msd([a["mmlu_delta"] for _, a in pairs], "{:+.1f}pp"),
                     _msd([a["extra_forgetting"] for _, a in pairs], "{:+.1f}pp")]
                    + ([" / ".join(_f(a.get("mmlu_mcnemar_p")) for _, a in pairs)] if mcnemar else []))
    head = ["Model", "Base", "Std FT", "Std Δ", "Ale FT", "Ale Δ", "Extra"]
    return markdown_table(head + (["McNemar p (per seed)"] if mcnemar else []), rows)


def quality_tests(c: Campaign, recipe: str = "aletheia") -> list[list[str]]:
    """Paired quality comparisons (this recipe vs standard) over all (model, seed) pairs."""
    pairs = [p for m in c.models for p in c.pairs(m, recipe)]
    out = []
    metrics: list[tuple[str, str, Callable[[float], float]]] = [("held-out loss", "eval_loss", lambda x: -x)]
    metrics += [(f"{BENCH_NAMES[b]} Δ (pp)", f"{b}_delta", lambda x: x) for b in BENCHMARKS if c.has_benchmark(b)]
    for name, key, better in metrics:
        s, a = [p[0].get(key) for p in pairs], [p[1].get(key) for p in pairs]
        t = paired_test(a, s)
        if t.n == 0:
            continue
        wins = [better(x) > better(y) for x, y in zip(a, s) if _ok(x) and _ok(y)]
        out.append([name, str(t.n), _f(t.mean_diff, "{:+.4f}"), _ci(t, "{:+.4f}"), _p(t.p), _f(t.cohen_d),
                    f"{sum(wins)}/{len(wins)}"])
    return out


def benchmark_delta_table(c: Campaign, recipe: str = "aletheia") -> str:
    rows = []
    for m in c.models:
        if pairs := c.pairs(m, recipe):
            rows.append([m, *(_msd([a.get(col) for _, a in pairs], "{:+.2f}") for col in EXTRA.values()),
                         _msd([a.get("eval_loss_vs_standard") for _, a in pairs], "{:+.4f}")])
    if not rows:
        return f"_No completed standard/{recipe} pair yet._"
    head = ["Model", "MMLU (pp)", "GSM8K (pp)", "HumanEval (pp)", "Held-out loss"]
    measured = any(c.has_benchmark(b) for b in BENCHMARKS)
    note = "" if measured else f"\n\nBenchmark columns are empty: {c.benchmark_reason()}."
    return markdown_table(head, rows) + note


def compute_matched_table(c: Campaign) -> str:
    rows = []
    for m in c.models:
        if not (cm := c.ok(model=m, recipe="compute_matched")):
            continue
        seeds = [r["seed"] for r in cm]
        losses = [[r["eval_loss"] for r in c.ok(model=m, recipe=k) if r["seed"] in seeds]
                  for k in ("standard", "aletheia", "compute_matched")]
        rows.append([m, *(_msd(x, "{:.4f}") for x in losses), _msd([r["steps"] for r in cm], "{:.0f}"),
                     _msd([1 / r["time_ratio"] if _ok(r.get("time_ratio")) else None for r in cm], "{:.2f}"),
                     _msd([r.get("eval_loss_vs_standard") for r in cm], "{:+.4f}")])
    if not rows:
        return "_No completed compute-matched run._"
    return markdown_table(["Model", "Std loss", "Ale loss", "CM-Ale loss", "CM steps", "CM time / Std time",
                   "CM − Std loss"], rows)


def budget_table(c: Campaign) -> str:
    rows = []
    for m in c.models:
        variants = [("standard", None)] + sorted(
            {(r["recipe"], r["budget"]) for r in c.select(model=m) if r["recipe"] in ("aletheia", "budget_sweep")},
            key=lambda x: x[1])
        if len(variants) < 3:
            continue
        for recipe, budget in variants:
            rs = [r for r in c.ok(model=m, recipe=recipe) if budget is None or r["budget"] == budget]
            if not rs:
                continue
            rows.append([m, "100% (standard)" if budget is None else f"{budget:.0%}",
                         _msd([r["n_selected"] for r in rs], "{:.1f}"), _msd([r["train_seconds"] for r in rs]),
                         "—" if budget is None else _msd([r["speedup_pct"] for r in rs], "{:.1f}"),
                         _msd([r["eval_loss"] for r in rs], "{:.4f}"),
                         *(_msd([r.get(f"{b}_delta") for r in rs], "{:+.1f}") for b in BENCHMARKS)])
    if not rows:
        return "_No completed budget sweep._"
    return markdown_table(["Model", "Budget", "Layers", "Train time (s)", "Speedup (%)", "Eval loss", "MMLU Δ",
                   "GSM8K Δ", "HumanEval Δ"], rows, "llrrrrrrr")


def failures_table(c: Campaign) -> str:
    failed = [r for r in c.rows if r["status"] != "completed"]
    if not failed:
        return "_None: every run completed._"
    return markdown_table(["Model", "Seed", "Recipe", "Budget", "Reason"],
                  [[r["model"], str(r["seed"]), r["recipe"], _f(r["budget"], "{:.0%}"), r.get("reason") or "—"]
                   for r in failed], "lrlrl")


# --- documents -------------------------------------------------------------------------------------

DEFINITIONS = """\
Definitions. Speedup (%) = 100 × (1 − Aletheia training time / standard training time) for the same
model and seed; Ratio = standard time / Aletheia time. Δ = fine-tuned − base score (percentage
points); extra forgetting = Aletheia's MMLU Δ − standard LoRA's MMLU Δ (positive: Aletheia forgot
less). Mean ± SD over seeds (sample SD); 95% CIs from the t distribution over seeds; per-model
p-values from a two-sided paired t-test of the seeds' training times; Cohen's d is paired
(mean difference / SD of differences); a win is a pair where Aletheia trained faster."""


def write_report(campaign_dir: str | Path) -> dict[str, Path]:
    """Rebuild results.csv from the records, then the report, the two analyses and the figures."""
    d = Path(campaign_dir)
    if not (d / "campaign.yaml").is_file() and not (d / "results.csv").is_file():
        raise AletheiaError(f"{d} is not a campaign folder (no campaign.yaml or results.csv); "
                            "run one first: aletheia campaign run SPEC --output DIR")
    _read_yaml(d / "campaign.yaml")  # a broken spec: one line now, before anything is rewritten
    if (d / "runs").is_dir():
        write_results_csv(d)
    c = Campaign(d, read_results_csv(d / "results.csv"))
    if not c.rows:
        raise AletheiaError(f"{d} has no finished run yet; wait for the campaign "
                            f"(aletheia campaign status {d})")
    figs, speed, made = d / "figures", {}, {}
    for recipe in c.same_steps:
        speed[recipe], stats = speedup_table(c, recipe)
        key = "speedup" + ("" if recipe == "aletheia" else f"_{recipe}")
        made[key] = figures.speedup(stats["per_model"], SAME_STEPS[recipe],
                                    figs / f"{key.replace('speedup', 'speedup_ci')}.png")
    made |= {
        "speed_vs_forgetting": figures.speed_vs_forgetting(
            c, {r: SAME_STEPS[r] for r in c.same_steps}, figs / "speed_vs_forgetting.png"),
        "compute_matched": figures.compute_matched(c, figs / "compute_matched_loss.png"),
        "probe_heatmap": figures.probe_heatmap(c, figs / "probe_heatmap.png"),
        "layer_budget": figures.layer_budget(c, figs / "layer_budget.png"),
    }
    files = {k: v for k, v in made.items() if v is not None}
    atomic_write_text(d / "REPORT.md", _report_md(c, speed, files))
    atomic_write_text(d / "FORGETTING_DELTAS_ANALYSIS.md", _forgetting_md(c))
    atomic_write_text(d / "COMPUTE_MATCHED_ANALYSIS.md", _compute_matched_md(c))
    files.update(report=d / "REPORT.md", forgetting=d / "FORGETTING_DELTAS_ANALYSIS.md",
                 compute_matched_analysis=d / "COMPUTE_MATCHED_ANALYSIS.md", results=d / "results.csv")
    return files


def _img(files: dict, key: str, alt: str) -> str:
    return f"\n\n![{alt}](figures/{files[key].name})" if key in files else ""


def _report_md(c: Campaign, speed_md: dict[str, str], files: dict) -> str:
    spec = c.spec or {}
    n_fail = sum(r["status"] != "completed" for r in c.rows)
    steps = spec.get("train", {}).get("steps", "?")
    out = [f"# Campaign report: {spec.get('name', c.dir.name)}", ""]
    if spec.get("description"):
        out += [spec["description"].strip(), ""]
    out += [(f"{len(c.rows)} runs ({len(c.rows) - n_fail} completed, {n_fail} failed) over "
             f"{len(c.models)} model(s), seeds {sorted({r['seed'] for r in c.rows})}, {steps} training "
             f"steps per run. Generated {time.strftime('%Y-%m-%d %H:%M %Z')} from `results.csv` and the "
             "run folders by `aletheia report`."), ""]
    if any(str(m.get("id", "")).startswith("random:") for m in spec.get("models", [])):
        out += [("> Models named `random:…` are tiny randomly initialised networks that exercise the "
                 "machinery; their timings and losses say nothing about real models."), ""]
    models = [[m, c.first(m, "family") or "—", _params(c.first(m, "parameters")),
               _f(c.first(m, "layers"), "{:.0f}"),
               _f(next((r["n_selected"] for r in c.ok(model=m, recipe="aletheia")), None), "{:.0f}"),
               str(len(c.select(model=m)))] for m in c.models]
    out += ["## Models", "", markdown_table(["Model", "Family", "Params", "Layers", "Aletheia layers",
                                             "Runs"], models, "llrrrr"), ""]
    for recipe in c.same_steps or ["aletheia"]:
        name, key = SAME_STEPS[recipe], "" if recipe == "aletheia" else f"_{recipe}"
        after = "" if recipe == "aletheia" else f" ({name})"
        out += [f"## Training speedup ({name} vs standard LoRA, same steps)", "",
                speed_md.get(recipe, f"_No completed standard/{recipe} pair yet._"),
                _img(files, "speedup" + key, "speedup per model with 95% CI"), ""]
        out += [f"## MMLU forgetting{after}", "", mmlu_table(c, recipe), ""]
        out += [f"## Multi-benchmark deltas ({name} Δ − standard Δ)", "",
                benchmark_delta_table(c, recipe), ""]
        if q := quality_tests(c, recipe):
            out += [(f"Quality, paired over all (model, seed) pairs (difference = {name} − standard; a "
                     f"win is a pair where {name} is better):"), "",
                    markdown_table(["Metric", "Pairs", "Mean diff", "95% CI", "p-value", "Cohen's d",
                                    f"{name} better"], q), ""]
    out += [_img(files, "speed_vs_forgetting", "speed vs extra forgetting").strip(), ""]
    out += ["## Compute-matched", "", compute_matched_table(c),
            _img(files, "compute_matched", "compute-matched loss"), "",
            "Details: [COMPUTE_MATCHED_ANALYSIS.md](COMPUTE_MATCHED_ANALYSIS.md).", ""]
    out += ["## Layer budget", "", budget_table(c), _img(files, "layer_budget", "layer budget"), ""]
    out += ["## Which layers the probe selects", "",
            _img(files, "probe_heatmap", "probe scores over normalised depth").strip()
            or "_No probe scores._", ""]
    out += ["## Failed runs", "", failures_table(c), ""]
    out += ["## Definitions", "", DEFINITIONS, "",
            "Forgetting per benchmark and seed: "
            "[FORGETTING_DELTAS_ANALYSIS.md](FORGETTING_DELTAS_ANALYSIS.md).", ""]
    return "\n".join(out)


def _forgetting_md(c: Campaign) -> str:
    out = ["# Forgetting deltas analysis", "",
           ("Per benchmark: each seed's base score, fine-tuned scores and deltas for standard LoRA and "
            "Aletheia, and the extra forgetting (Aletheia Δ − standard Δ; positive: Aletheia forgot "
            "less). Generated by `aletheia report` from `results.csv`."), ""]
    measured = [b for b in BENCHMARKS if c.has_benchmark(b)]
    if not measured:
        out += [f"No benchmark was measured: {c.benchmark_reason()}.", ""]
    for recipe in c.same_steps or ["aletheia"]:
        out += _forgetting_sections(c, recipe, measured)
    return "\n".join(out)


def _forgetting_sections(c: Campaign, recipe: str, measured: list[str]) -> list[str]:
    out, after = [], "" if recipe == "aletheia" else f" ({SAME_STEPS[recipe]})"
    mcnemar = any(_ok(r.get("mmlu_mcnemar_p")) for r in c.rows)
    pairs = [p for m in c.models for p in c.pairs(m, recipe)]
    for b in measured:
        with_p = mcnemar and b == "mmlu"
        rows = [[a["model"], str(s["seed"]), _f(s.get(f"{b}_base"), "{:.1f}"),
                 _f(s.get(f"{b}_ft"), "{:.1f}"), _f(s.get(f"{b}_delta"), "{:+.1f}"),
                 _f(a.get(f"{b}_ft"), "{:.1f}"), _f(a.get(f"{b}_delta"), "{:+.1f}"),
                 _f(a.get(EXTRA[b]), "{:+.1f}")] + ([_f(a.get("mmlu_mcnemar_p"))] if with_p else [])
                for s, a in pairs]
        t = paired_test([a.get(f"{b}_delta") for _, a in pairs], [s.get(f"{b}_delta") for s, _ in pairs])
        ok = [x for x in (a.get(EXTRA[b]) for _, a in pairs) if _ok(x)]
        head = ["Model", "Seed", "Base", "Std FT", "Std Δ", "Ale FT", "Ale Δ", "Extra"]
        out += [f"## {BENCH_NAMES[b]}{after}", "",
                markdown_table(head + (["McNemar p"] if with_p else []), rows), "",
                (f"Extra forgetting over {t.n} pairs: mean {_f(t.mean_diff, '{:+.2f}')} pp, 95% CI "
                 f"{_ci(t, '{:+.2f}')}, paired t-test p = {_p(t.p)}, Cohen's d = {_f(t.cohen_d)}; within "
                 f"±1 pp in {sum(abs(x) <= 1 for x in ok)}/{len(ok)} pairs; worst "
                 f"{_f(min(ok, default=None), '{:+.1f}')} pp."), ""]
        if with_p:
            out += [("McNemar p: exact test of the standard and this run's right/wrong answers on the "
                     "same questions (small p: the two fine-tuned models answer differently)."), ""]
    rows = [[a["model"], str(s["seed"]), _f(s.get("eval_loss_before"), "{:.4f}"),
             _f(s.get("eval_loss"), "{:.4f}"), _f(a.get("eval_loss"), "{:.4f}"),
             _f(a.get("eval_loss_vs_standard"), "{:+.4f}")] for s, a in pairs]
    out += [f"## Held-out loss{after}", "",
            markdown_table(["Model", "Seed", "Base", "Std FT", "Ale FT", "Ale − Std"], rows)
            if rows else "_No completed pair._", ""]
    return out


def _compute_matched_md(c: Campaign) -> str:
    out = ["# Compute-matched analysis", "",
           ("Compute-matched Aletheia trains the same selected layers for more steps, to spend the wall-clock time "
           "it saves (a fixed step factor, or as many steps as fit in the paired standard run's time). Each row "
           "is one seed; generated by `aletheia report` from `results.csv`."), ""]
    # (standard, Aletheia at the same steps or {}, compute-matched) per seed
    trios = [(s, (c.ok(model=m, seed=s["seed"], recipe="aletheia") or [{}])[0], cm)
             for m in c.models for s, cm in c.pairs(m, "compute_matched")]
    if not trios:
        return "\n".join(out + ["_No completed compute-matched run._", ""])
    steps_time = lambda r: f"{r.get('steps', '—')} / {_f(r.get('train_seconds'), '{:.1f}')}s"
    rows = [[s["model"], str(s["seed"]), steps_time(s), steps_time(a), steps_time(cm),
             _f(1 / cm["time_ratio"] if _ok(cm.get("time_ratio")) else None, "{:.2f}"),
             *(_f(r.get("eval_loss"), "{:.4f}") for r in (s, a, cm))] for s, a, cm in trios]
    std_l, ale_l, cm_l = ([r.get("eval_loss") for r in col] for col in zip(*trios))
    vs_std, vs_ale = paired_test(cm_l, std_l), paired_test(cm_l, ale_l)
    out += [markdown_table(["Model", "Seed", "Std steps / time", "Ale steps / time", "CM steps / time", "CM time / Std",
                    "Std loss", "Ale loss", "CM loss"], rows), "",
            (f"Held-out loss, compute-matched − standard over {vs_std.n} pairs: mean {_f(vs_std.mean_diff, '{:+.4f}')} "
             f"(95% CI {_ci(vs_std, '{:+.4f}')}, p = {_p(vs_std.p)}, d = {_f(vs_std.cohen_d)})."), "",
            (f"Held-out loss, compute-matched − Aletheia at the same steps over {vs_ale.n} pairs: mean "
             f"{_f(vs_ale.mean_diff, '{:+.4f}')} (95% CI {_ci(vs_ale, '{:+.4f}')}, p = {_p(vs_ale.p)})."), ""]
    for b in filter(c.has_benchmark, BENCHMARKS):
        t = paired_test([cm.get(f"{b}_delta") for s, _, cm in trios], [s.get(f"{b}_delta") for s, _, cm in trios])
        out += [(f"{BENCH_NAMES[b]}: compute-matched Δ − standard Δ = {_f(t.mean_diff, '{:+.2f}')} pp over {t.n} "
                 f"pairs (p = {_p(t.p)})."), ""]
    return "\n".join(out)


__all__ = ["Campaign", "write_report"]
