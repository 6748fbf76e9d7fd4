"""`ptft-hf-compare PATH...`: finished runs side by side, from their folders alone. PATH is a run, a
pipeline (each stage a row) or a sweep (each job a row); it prints one table of the chosen metrics
(`--metrics`, paths into metrics.json such as `data_train/tokens`) and writes the runs' loss curves
on shared axes to a PNG (`--out`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ptft_hf.errors import Problem, UserError
from ptft_hf.run_dir import FINISHED_MARKER
from ptft_hf.tracking.record import flat_numbers
from ptft_hf.training.report import draw_losses, loss_axes_style, read_log

PROG = "ptft-hf-compare"
DEFAULT_METRICS = ("eval_perplexity", "eval_accuracy", "eval_f1", "validation_perplexity", "validation_accuracy",
                   "train_loss", "wall_time_s")


def _job_order(path: Path) -> tuple[bool, Any]:
    return (not path.name.isdigit(), int(path.name) if path.name.isdigit() else path.name)


def finished_runs(path: Path) -> list[Path]:
    """The finished run folders under `path`: itself (a run), its stages (a pipeline) or its jobs'
    (a sweep: the subfolders holding a finished run or pipeline), in order."""
    marker = path / FINISHED_MARKER
    if marker.is_file():
        metrics = json.loads(marker.read_text(encoding="utf-8"))
        if "stages" not in metrics:
            return [path]
        order = metrics.get("stage_order") or list(metrics["stages"])
        return [path / name for name in order if (path / name / FINISHED_MARKER).is_file()]
    if not path.is_dir():
        return []
    return [run for job in sorted((p for p in path.iterdir() if p.is_dir()), key=_job_order)
            if (job / FINISHED_MARKER).is_file() for run in finished_runs(job)]


def _labels(runs: list[Path]) -> list[str]:
    """Each run's path below the folder all of them share (two runs of one name stay apart)."""
    resolved = [r.resolve() for r in runs]
    common = Path(*resolved[0].parts[:min(len(r.parts) for r in resolved) - 1]) if len(resolved) > 1 else resolved[0].parent
    while not all(r.is_relative_to(common) for r in resolved):
        common = common.parent
    return [str(r.relative_to(common)) for r in resolved]


def _seed(run: Path) -> Any:
    config = run / "config.yaml"
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("seed") if config.exists() else None


def compare_table(runs: list[Path], metrics: list[str] | None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): run, seed and each metric; `metrics` None: the default ones any run has. A metric
    no run has is a UserError listing the ones they have."""
    figures = [flat_numbers(json.loads((r / FINISHED_MARKER).read_text(encoding="utf-8"))) for r in runs]
    present = sorted(set().union(*figures))
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in present]
    missing = [m for m in metrics if m not in present]
    if missing:
        raise UserError(Problem("--metrics", f"no run has {', '.join(missing)}",
                                f"choose among the metrics they have: {', '.join(present)}"))
    rows = [[label, str(_seed(run) if _seed(run) is not None else "–"),
             *(f"{f[m]:.4g}" if isinstance(f.get(m), float) else str(f.get(m, "–")) for m in metrics)]
            for label, run, f in zip(_labels(runs), runs, figures)]
    return ["run", "seed", *metrics], rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def plot_runs(runs: list[Path], out: Path) -> Path:
    """Every run's loss curves on one pair of axes, a colour per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for i, (label, run) in enumerate(zip(_labels(runs), runs)):
        metrics = json.loads((run / FINISHED_MARKER).read_text(encoding="utf-8"))
        draw_losses(ax, read_log(run / "train_log.jsonl"), label, f"C{i % 10}", resumed_at=metrics.get("resumed_from_step") or None,
                    mark_evaluations=False)
    loss_axes_style(ax, "loss curves")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def compare(paths: list[Path], metrics: list[str] | None, out: Path) -> str:
    """The table as text; the plot written to `out`."""
    runs = list(dict.fromkeys(run.resolve() for path in paths for run in finished_runs(path)))  # each once
    if not runs:
        raise UserError(Problem("PATH", f"no finished run (no {FINISHED_MARKER}) in {', '.join(str(p) for p in paths)}",
                                "give run, pipeline or sweep folders whose runs finished"))
    header, rows = compare_table(runs, metrics)
    plot_runs(runs, out)
    return format_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run, pipeline or sweep folders")
    parser.add_argument("--metrics", help="comma-separated metrics.json keys (nested: data_train/tokens); "
                                          f"default: those of {', '.join(DEFAULT_METRICS)} that the runs have")
    parser.add_argument("--out", type=Path, default=Path("compare_losses.png"), help="the loss plot (default: %(default)s)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        table = compare(args.paths, metrics, args.out)
    except UserError as err:
        for problem in err.problems:
            sys.stderr.write(f"{PROG}: error: {problem}\n")
        sys.exit(2)
    print(table)
    print(f"\nloss curves: {args.out}")


if __name__ == "__main__":
    main()
