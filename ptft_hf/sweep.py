"""A Hydra callback that compares the jobs of a multirun sweep in one table.

`ptft-hf -m strategy=full,lora,qlora,dora ...` ends with `summary.md` and `summary.json` in the
sweep folder: per job, its overrides, trainable parameters, train loss and eval perplexity.
A sweep over `seed=` also gets each configuration's mean, spread and range across its seeds
(`-m seed=1,2,3 model.name_or_path=a,b`: two rows, three seeds each), also in across_seeds.json.
`summary.png` plots the main metric against the swept value, with error bars over seeds.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ptft_hf.distributed import is_main_process
from ptft_hf.run_dir import FINISHED_MARKER
from ptft_hf.pipeline.report import quality_summary

log = logging.getLogger(__name__)


def _job_overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    return " ".join(yaml.safe_load(path.read_text()) or [])


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Finished jobs of a sweep folder, in job order."""
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / FINISHED_MARKER).exists()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name))
    for job_dir in jobs:
        metrics = json.loads((job_dir / FINISHED_MARKER).read_text())
        if "stages" in metrics:  # a pipeline job: compare its last stage
            metrics = list(metrics["stages"].values())[-1]
        rows.append({"job": job_dir.name, "overrides": _job_overrides(job_dir), **{
            k: metrics.get(k) for k in ("strategy", "parameters", "trainable_parameters", "trainable_percent",
                                        "train_loss", "eval_perplexity_before", "eval_perplexity", "eval_accuracy_before",
                                        "eval_accuracy", "eval_f1_before", "eval_f1", "validation_accuracy",
                                        "validation_perplexity", "peak_memory_mb",
                                        "saved_bytes", "wall_time_s") if k in metrics}})
    return rows


# the validation figure a sweep's choice reads (higher is better?), in order of preference
_VALIDATION_METRICS = (("validation_accuracy", True), ("validation_perplexity", False))


def _validation(row: dict[str, Any]) -> tuple[str, float, bool] | None:
    return next(((name, float(row[name]), higher) for name, higher in _VALIDATION_METRICS
                 if row.get(name) is not None), None)


def chosen_on_validation(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job with the best validation figure (accuracy, else perplexity): the sweep's choice, made
    without the test split. None when no job has a validation figure."""
    scored = [(r, v) for r in rows if (v := _validation(r)) is not None]
    if not scored:
        return None
    return max(scored, key=lambda rv: rv[1][1] if rv[1][2] else -rv[1][1])[0]


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("| job | overrides | strategy | trainable parameters | train loss | validation | eval before → after | "
              "peak memory (MB) | saved (KB) | wall time (s) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = _validation(r)
        validation = f"{v[0].removeprefix('validation_')} {v[1]:.4g}" if v else "–"
        lines.append(
            f"| {r['job']} | `{r['overrides']}` | {r['strategy']} | {r['trainable_parameters']:,} ({r['trainable_percent']:.2f}%) | "
            f"{r['train_loss']:.4f} | {validation} | {quality_summary(r)} | "
            f"{r['peak_memory_mb']} | {(r['saved_bytes'] or 0) / 1024:.0f} | {r['wall_time_s']} |"
        )
    best = chosen_on_validation(rows)
    if best is not None and len(rows) > 1:
        name, value, _ = _validation(best)
        lines += ["", f"Chosen on validation ({name} {value:.4g}): job {best['job']} (`{best['overrides']}`); "
                      f"its test figure: {quality_summary(best)}. Read the test column of the others only as a "
                      "report: choosing by it would make the chosen figure optimistic."]
    return "\n".join(lines)


_SEED_METRICS = ("eval_accuracy", "eval_f1", "eval_perplexity", "train_loss", "wall_time_s")


def _without_seed(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if not o.lstrip("+").startswith("seed="))


def across_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that differ only in `seed=`, grouped: per configuration, each metric's mean, sample
    standard deviation, min and max over its seeds. Empty unless some configuration ran under
    two or more seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_without_seed(row["overrides"]), []).append(row)
    if all(len(jobs) < 2 for jobs in groups.values()):
        return []
    summary = []
    for overrides, jobs in groups.items():
        entry: dict[str, Any] = {"overrides": overrides, "jobs": [j["job"] for j in jobs]}
        for name in _SEED_METRICS:
            values = [float(j[name]) for j in jobs if j.get(name) is not None]
            if values:
                entry[name] = {"mean": statistics.fmean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                               "min": min(values), "max": max(values), "n": len(values)}
        summary.append(entry)
    return summary


def format_seed_table(groups: list[dict[str, Any]]) -> str:
    names = [n for n in _SEED_METRICS if any(n in g for g in groups)]
    lines = ["| overrides (seed aside) | seeds | " + " | ".join(f"{n}: mean ± std (min–max)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for g in groups:
        cells = [f"{g[n]['mean']:.4g} ± {g[n]['std']:.2g} ({g[n]['min']:.4g}–{g[n]['max']:.4g})" if n in g else "–"
                 for n in names]
        lines.append(f"| `{g['overrides']}` | {len(g['jobs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_PLOTTED = ("eval_perplexity", "eval_accuracy", "eval_f1", "train_loss")  # the first one the jobs have is plotted


def _settings(overrides: str) -> dict[str, str]:
    return dict(o.lstrip("+").split("=", 1) for o in overrides.split() if "=" in o)


@dataclass
class SweepPoint:
    label: str  # the swept value(s) of one configuration
    x: float  # the value, or its place when the values are not numbers
    mean: float  # the metric's mean over the configuration's seeds
    std: float  # their sample standard deviation (0 for one seed)
    seeds: int


def sweep_points(rows: list[dict[str, Any]]) -> tuple[str | None, list[str], list[SweepPoint]]:
    """(metric, swept keys, one point per configuration in x order): the first of `_PLOTTED` the jobs
    have, against the overrides that differ between configurations (the seed aside)."""
    metric = next((m for m in _PLOTTED if any(r.get(m) is not None for r in rows)), None)
    groups: dict[str, list[float]] = {}
    for row in rows:
        if metric is not None and row.get(metric) is not None:
            groups.setdefault(_without_seed(row["overrides"]), []).append(float(row[metric]))
    settings = {overrides: _settings(overrides) for overrides in groups}
    swept = sorted({k for s in settings.values() for k in s if len({t.get(k) for t in settings.values()}) > 1})
    if not swept:
        return metric, [], []
    labels = {o: ", ".join(f"{k}={s.get(k, '–')}" for k in swept) if len(swept) > 1 else s.get(swept[0], "–")
              for o, s in settings.items()}
    numeric = all(_is_float(label) for label in labels.values())  # a learning rate; else categories (strategy=full,lora)
    points = [SweepPoint(labels[o], float(labels[o]) if numeric else float(i), statistics.fmean(v),
                         statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for i, (o, v) in enumerate(groups.items())]
    return metric, swept, sorted(points, key=lambda p: p.x)


def plot_sweep(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """The jobs' main metric against the swept value: per configuration the mean over its seeds,
    the standard deviation as error bar. None when nothing but the seed was swept."""
    metric, swept, points = sweep_points(rows)
    if not points:
        return None
    from matplotlib.figure import Figure

    numeric = all(_is_float(p.label) for p in points)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.errorbar([p.x for p in points], [p.mean for p in points], yerr=[p.std for p in points], fmt="o-" if numeric else "o",
                capsize=4)
    if numeric and points[0].x > 0 and points[-1].x / points[0].x >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks([p.x for p in points], [p.label for p in points], rotation=20, fontsize=8)
    seeds = max(p.seeds for p in points)
    ax.set_xlabel(", ".join(swept))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {', '.join(swept)}" + (f"\n(mean ± std over {seeds} seeds)" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class SweepSummary(Callback):
    """Writes summary.md / summary.json into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not is_main_process() or not sweep_dir.is_dir():  # several processes: rank 0 writes
            return
        rows = collect_sweep(sweep_dir)
        if not rows:
            return
        table = format_table(rows)
        groups = across_seeds(rows)
        if groups:
            table += "\n\n## Across seeds\n\n" + format_seed_table(groups)
        plot = plot_sweep(rows, sweep_dir / "summary.png")
        if plot is not None:
            table += f"\n\n![the metric against the swept value]({plot.name})"
        (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n{table}\n", encoding="utf-8")
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        if groups:
            (sweep_dir / "across_seeds.json").write_text(json.dumps(groups, indent=2) + "\n", encoding="utf-8")
        log.info("sweep summary (%s):\n%s", sweep_dir / "summary.md", table)
