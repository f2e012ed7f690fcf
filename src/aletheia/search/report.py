"""``SEARCH_REPORT.md``, ``search_frontier.png`` and ``summary.json``, rebuilt from the run records.

The quality–time plane: held-out loss (lower is better) against training seconds (lower is faster).
Runs are only comparable at equal step counts, so the figure has one panel for the quick scan and
one for the full-length runs (full, push, optuna and the ablation's cell means). A run is on the
Pareto frontier when no other run of its panel is both faster and at least as good, or better and at
most as slow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..stats import mean_sd
from ..tables import markdown_table
from ..utils import atomic_write_text, write_json
from .config import STAGES
from .rows import add_speed, fmt, mean, rank_rows, standard

if TYPE_CHECKING:
    from .runner import Search

REPORT_FILE = "SEARCH_REPORT.md"
FIGURE_FILE = "search_frontier.png"
SUMMARY_FILE = "summary.json"
STAGE_COLORS = {"scan": "#7f8c8d", "full": "#1f77b4", "push": "#d62728", "optuna": "#9467bd",
                "ablation": "#2ca02c", "standard": "#111111"}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (time, loss) that no other point dominates (both minimised)."""
    # a point never dominates itself: it is not strictly better than itself on either axis
    front = [i for i, (t, y) in enumerate(points)
             if not any(t2 <= t and y2 <= y and (t2 < t or y2 < y) for t2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def ablation_cells(rows: list[dict]) -> list[dict]:
    """The ablation's four cells as points: mean loss and mean training time over seeds."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["ok"]:
            cells.setdefault(tuple(r["cell"]), []).append(r)
    return [{**rs[0], "run_id": f"ablation__{rs[0]['arm']}", "seed": [r["seed"] for r in rs],
             "eval_loss": mean([r["eval_loss"] for r in rs]),
             "eval_loss_sd": mean_sd([r["eval_loss"] for r in rs])[1] if len(rs) > 1 else None,
             "train_seconds": mean([r["train_seconds"] for r in rs]), "n": len(rs), "ok": True}
            for _, rs in sorted(cells.items())]


def panels(search: Search) -> dict[str, list[dict]]:
    """The comparable groups of runs: quick scan, and everything at the full step count."""
    scan = search.rows("scan")
    full_base = standard(search.rows("full"))
    add_speed(scan, standard(scan) + full_base)
    # full_length_rows() come with their speed against the same baselines
    full_len = search.full_length_rows() + add_speed(ablation_cells(search.rows("ablation")), full_base)
    return {"scan": [r for r in scan if r["ok"]], "full": [r for r in full_len if r["ok"]]}


def plot_frontier(groups: dict[str, list[dict]], path: Path, winner: str | None, steps: tuple[int, int],
                  title: str) -> Path:
    from ..plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4), dpi=130)
    names = {"scan": f"quick scan ({steps[0]} steps)", "full": f"full length ({steps[1]} steps)"}
    for ax, (panel, rows) in zip(axes, groups.items()):
        ax.set_title(names[panel], fontsize=11)
        ax.set_xlabel("training time (s)  ← faster")
        ax.set_ylabel("held-out loss  ← better")
        ax.grid(alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
            continue
        pts = [(r["train_seconds"], r["eval_loss"]) for r in rows]
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="#f39c12", lw=2, alpha=0.8, zorder=1, label="Pareto frontier")
        seen = set()
        for i, r in enumerate(rows):
            kind = "standard" if r["method"] == "standard" else r["stage"]
            label = {"standard": "standard LoRA", "ablation": "ablation cell (mean of seeds)"}.get(kind, kind)
            marker = "*" if kind == "standard" else ("s" if kind == "ablation" else "o")
            ax.scatter(*pts[i], s=150 if kind == "standard" else 55, marker=marker, color=STAGE_COLORS[kind],
                       edgecolor="#f39c12" if i in front else "white", linewidth=2 if i in front else 0.5,
                       zorder=3, label=None if label in seen else label)
            seen.add(label)
            if kind == "ablation" and r.get("eval_loss_sd"):
                ax.errorbar(*pts[i], yerr=r["eval_loss_sd"], color=STAGE_COLORS[kind], capsize=3, zorder=2, lw=1)
            name = "standard" if kind == "standard" else r["arm"]
            if panel == "full" and r["run_id"] == winner:
                name = f"WINNER: {name}"
            ax.annotate(name, pts[i], textcoords="offset points", xytext=(5, 4), fontsize=7,
                        fontweight="bold" if name.startswith("WINNER") else "normal")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
        xs = [p[0] for p in pts]
        pad = (max(xs) - min(xs)) * 0.25 or max(xs) * 0.1 or 1.0
        ax.set_xlim(min(xs) - pad * 0.2, max(xs) + pad)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _or_dash(fmt: str) -> Callable[[Any], str]:
    """``fmt`` applied to a value, or "–" for a missing one (a NaN still reads "nan")."""
    return lambda x: "–" if x is None else fmt.format(x)


_loss, _secs, _speed = _or_dash("{:.4f}"), _or_dash("{:.1f}"), _or_dash("{:.2f}×")


def _settings(s: dict | None) -> str:
    if not s:
        return "all layers, standard rank"
    ranks = {"attention": f"attn r{s['attention_rank']}", "mlp": f"MLP r{s['mlp_rank']}",
             "both": f"attn r{s['attention_rank']} + MLP r{s['mlp_rank']}"}[s["modules"]]
    return f"k={s['layers']}, {ranks}, lr {fmt(float(s['lr']))}"


def _table(rows: list[dict], front_ids: set[str] | None = None) -> list[str]:
    head = ["run", "recipe", "held-out loss", "train s", "speed vs standard", "trainable params", "status"]
    cells = [[r["arm"] + (" ◆" if front_ids and r["run_id"] in front_ids else ""), _settings(r["settings"]),
              _loss(r["eval_loss"]), _secs(r.get("train_seconds")), _speed(r.get("speedup")),
              str(r.get("trainable_params") or "–"),
              r["status"] + (f" ({r['reason']})" if r.get("reason") else "")] for r in rows]
    return markdown_table(head, cells, "llrrrrl").splitlines()


def write_search_report(search: Search) -> dict:
    """Write the report, the figure and summary.json from the stage files and run records."""
    cfg, out = search.cfg, search.out
    d = {s: search.decisions(s) for s in STAGES[1:]}
    groups = panels(search)
    fronts = {panel: {rows[i]["run_id"] for i in pareto_front([(r["train_seconds"], r["eval_loss"]) for r in rows])}
              for panel, rows in groups.items()}
    full_rows, front_full = groups["full"], fronts["full"]
    leader = (d["optuna"] or d["push"] or d["full"] or {}).get("winner") or None
    leader_row = next((r for r in full_rows if leader and r["run_id"] == leader["run_id"]), None)
    base = next(iter(standard(full_rows)), None)
    fig = plot_frontier(groups, out / FIGURE_FILE, leader["run_id"] if leader else None,
                        (cfg.scan.steps, cfg.full.steps), f"{cfg.name}: held-out loss vs training time")

    L: list[str] = [f"# Recipe search: {cfg.name}", ""]
    if cfg.description:
        L += [cfg.description, ""]
    done = [s for s in STAGES[1:] if d[s] is not None]
    L += [(f"Model `{search.probe.get('model_path') or cfg.model}` ({search.num_layers} layers), seed {cfg.seed}, "
          f"data `{cfg.data.path or 'built-in bootstrap set'}`. Stages done: probe, {', '.join(done) or 'none'}."),
          (f"Quick scan {cfg.scan.steps} steps; full, push and ablation runs {cfg.full.steps} steps. "
          "Objective: held-out loss (lower is better). Speed: standard LoRA's training time at the same "
          "steps ÷ the run's (higher is faster)."), "", f"![quality-time plane]({FIGURE_FILE})", ""]

    # the verdict
    L += ["## Winner", ""]
    recommended = None
    if leader_row:
        vs = (f"; standard LoRA {_loss(base['eval_loss'])}, {leader_row['eval_loss'] - base['eval_loss']:+.4f}"
              if base else "")
        why = [f"lowest held-out loss of the {cfg.full.steps}-step runs ({_loss(leader_row['eval_loss'])}{vs})",
               f"trains {_speed(leader_row.get('speedup'))} as fast as standard LoRA "
               f"({_secs(leader_row['train_seconds'])} s vs {_secs(base['train_seconds']) if base else '–'} s)",
               "on the Pareto frontier" if leader_row["run_id"] in front_full
               else "not on the Pareto frontier (a faster run is at least as good)"]
        L += [f"**Search winner: `{leader_row['arm']}`** ({_settings(leader_row['settings'])}, from the "
              f"{leader_row['stage']} stage): " + "; ".join(why) + ".", ""]
        recommended = {"source": "search", "arm": leader_row["arm"], "settings": leader_row["settings"],
                       "eval_loss": leader_row["eval_loss"], "speedup": leader_row.get("speedup")}
    if d["ablation"]:
        bc = d["ablation"]["best_cell"]
        seeds = len(cfg.ablation.seeds)
        loss = f"mean loss {bc['mean_eval_loss']:.4f}"
        recipe = _settings(bc["settings"])
        changed = {k: v for k, v in bc["settings"].items() if leader and v != leader["settings"][k]}
        if not leader:
            L += [f"**Ablation:** best cell over {seeds} seeds: {recipe} ({loss}).", ""]
        elif changed:
            L += [f"**After the ablation:** the best cell over {seeds} seeds changes "
                  + ", ".join(f"{k} to {fmt(v)}" for k, v in changed.items())
                  + f" ({loss}); recommended recipe: {recipe}.", ""]
        else:
            L += [f"**After the ablation:** the winner's cell is also the best over {seeds} seeds ({loss}); "
                  f"recommended recipe: {recipe}.", ""]
        recommended = {"source": "ablation", "settings": bc["settings"], "mean_eval_loss": bc["mean_eval_loss"]}
    if not leader_row:
        L += ["No full-length run has finished yet.", ""]

    # the frontier
    L += ["## Pareto frontier (full length)", "",
          ("Runs that no other run beats on both held-out loss and training time (◆ in the stage tables). "
           "Ablation cells are means over their seeds; each seed draws its own held-out split, so they are "
           "best compared with each other."), ""]
    L += _table(sorted([r for r in full_rows if r["run_id"] in front_full], key=lambda r: r["train_seconds"])) + [""]

    # stages
    L += ["## Stages", "", "### 1. Gradient probe", "",
          (f"Probed once on the training data ({search.probe.get('batches', '?')} batches, "
          f"{search.probe.get('seconds', 0):.1f} s); every arm takes its k layers from this ranking "
          f"(highest score first): {search.ranking}."), "", "![probe scores](probe_scores.png)", ""]

    def stage_table(stage: str, panel: str) -> list[str]:
        """Ranked completed aletheia runs, then the standard baseline, then failed runs."""
        ok_rows = [r for r in groups[panel] if r["stage"] == stage]
        ranked = rank_rows(ok_rows, cfg.tie_decimals) + standard(ok_rows)
        ids = {r["run_id"] for r in ranked}
        rest = [{**r, "speedup": None} for r in search.rows(stage) if r["run_id"] not in ids]
        return _table(ranked + rest, fronts[panel]) + [""]

    if d["scan"]:
        L += [f"### 2. Quick scan ({cfg.scan.steps} steps)", "", d["scan"]["summary"] + ".", "",
              *stage_table("scan", "scan")]
    if d["full"]:
        L += [f"### 3. Full runs ({cfg.full.steps} steps)", "", d["full"]["summary"] + ".", "",
              *stage_table("full", "full")]
    if d["push"]:
        L += [f"### 4. Push (around `{d['push']['around']}`)", "", d["push"]["summary"] + ".",
              *[f"- {n}" for n in d["push"].get("notes", [])], "", *stage_table("push", "full")]
    if d["optuna"]:
        L += ["### 5. Optuna", "", d["optuna"]["summary"] + "."]
        if not d["optuna"].get("skipped"):
            L += [f"- {n}" for n in d["optuna"].get("notes", [])] + [""]
            L += _table(add_speed(search.rows("optuna"), standard(search.rows("scan") + search.rows("full"))),
                        front_full)
        L += [""]
    if d["ablation"]:
        L += _ablation_section(d["ablation"], search, cfg.ablation.alpha)

    L += ["## Files", "", f"- `{FIGURE_FILE}`: every completed run on the quality–time plane, frontier marked.",
          "- `stages/STAGE.plan.json`: the runs a stage planned; `stages/STAGE.json`: its decisions.",
          "- `runs/RUN_ID/`: each run's folder (adapter, config.yaml, metrics.jsonl, summary.json, record.json).",
          "- `probe.json`: the probe scores every arm's layers come from.", "",
          f"Resume or rebuild: `aletheia search {out / 'search.yaml'} --output {out}` (finished runs are skipped).",
          ""]
    atomic_write_text(out / REPORT_FILE, "\n".join(L))
    summary = {"name": cfg.name, "stages_done": ["probe", *done], "winner": leader, "recommended": recommended,
               "frontier": sorted(front_full), "baseline": {k: base.get(k) for k in ("eval_loss", "train_seconds")}
               if base else None, "report": str(out / REPORT_FILE), "figure": str(fig)}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _ablation_section(a: dict, search: Search, alpha: float) -> list[str]:
    an = a["analysis"]
    (fa, la), (fb, lb) = a["factors"].items()
    L = [f"### 6. Factorial ablation ({fa} × {fb} × {len(search.cfg.ablation.seeds)} seeds = {an['n']} runs)", "",
         f"Factors: {a['why_factors']}.", f"Other settings as the leader: {_settings(a['base'])}.", "",
         "Cell means of held-out loss (mean training seconds):", ""]
    cells = [[fmt(la[i])] + [f"{an['cell_means'][i][j]:.4f} ({_secs(a['cell_seconds'][i][j])} s, "
                             f"n={an['cell_counts'][i][j]})" for j in (0, 1)] for i in (0, 1)]
    L += markdown_table([f"{fa} \\ {fb}", fmt(lb[0]), fmt(lb[1])], cells).splitlines()
    terms = [[t["term"], f"{t['effect']:+.4f}", f"{t['t']:.3f}", f"{t['F']:.3f}",
              f"{t['p']:.4g}" + (" *" if t["p"] < alpha else "")] for t in an["terms"]]
    L += ["", *markdown_table(["term", "effect on loss", "t", f"F(1, {an['df_resid']})", "p"], terms).splitlines()]
    L += ["",
          (f"Effect = mean loss at the second level − mean at the first ({fa}: {fmt(la[0])} → {fmt(la[1])}; "
          f"{fb}: {fmt(lb[0])} → {fmt(lb[1])}), averaged over the other factor; the interaction effect is half "
          "the difference between the first factor's effect at the second factor's two levels. Test: OLS on "
          "±1-coded factors and their product, two-sided t-test per coefficient on n − 4 residual degrees of "
          f"freedom (F = t², two-way ANOVA with interaction). * p < {alpha}. Seeds change data order, split and "
          "LoRA init; the probe ranking is shared."), "", a["summary"] + ".", ""]
    if a.get("failed"):
        L += [f"Failed runs left out: {', '.join(a['failed'])}.", ""]
    return L
