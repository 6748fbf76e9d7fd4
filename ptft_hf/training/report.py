"""Run artefacts a person reads: the loss plot and `report.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _points(records: list[dict[str, Any]], key: str, splits: tuple[str | None, ...]) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and r.get("split") in splits]


def draw_losses(ax: Any, records: list[dict[str, Any]], name: str = "", color: str | None = None, eval_only: bool = False,
                resumed_at: int | None = None, mark_evaluations: bool = True) -> bool:
    """One run's curves on `ax`: train loss (line), the validation split's loss at each evaluation
    (dots, each evaluation marked by a dotted vertical line), the test split's before and after
    training (squares), and where a resumed run continued (dashed line). False: nothing to draw.
    Records of runs written before splits were named count as validation."""
    prefix = f"{name} " if name else ""
    train = [] if eval_only else _points(records, "loss", (None,))
    validation = _points(records, "eval_loss", ("validation", None))
    test = _points(records, "eval_loss", ("test",))
    if train:
        color = ax.plot(*zip(*train), color=color, alpha=0.8, label=f"{prefix}train loss")[0].get_color()
    if validation:
        color = ax.plot(*zip(*validation), "o--", color=color, label=f"{prefix}validation loss")[0].get_color()
        if mark_evaluations:
            for step, _ in validation:
                ax.axvline(step, color=color, linestyle=":", linewidth=0.8, alpha=0.5)
    if test:
        color = ax.plot(*zip(*test), "s", color=color, markerfacecolor="none", label=f"{prefix}test loss (before, after)")[0].get_color()
    if resumed_at:
        ax.axvline(resumed_at, color=color or "black", linestyle="--", linewidth=1.2, label=f"{prefix}resumed at step {resumed_at}")
    return bool(train or validation or test)


def loss_axes_style(ax: Any, title: str = "") -> None:
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_loss(log_path: str | Path, out_path: str | Path, title: str = "", resumed_at: int | None = None) -> Path | None:
    """Train loss (per logging step), the validation loss at each evaluation (marked), the test
    loss before and after training, and where a resumed run continued, against the step."""
    records = read_log(log_path)
    # imported here: only the process that writes the report pays for matplotlib (~1 s); not pyplot,
    # saving a PNG must not change a notebook's backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if not draw_losses(ax, records, resumed_at=resumed_at):
        return None
    loss_axes_style(ax, title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return Path(out_path)


TEST_PREDICTIONS = "test_predictions.jsonl"  # a classifier's per-example test predictions, in test-set order

# (our figure, the floor's, lower is better, how the interval was made)
_FLOORS = (("eval_accuracy", "majority_accuracy", False, "Wilson"), ("eval_f1", "majority_f1", False, "bootstrap"),
           ("eval_perplexity", "unigram_perplexity", True, "bootstrap over eval blocks"))


def _beats(metrics: dict[str, Any], ours: str, floor: str, lower_is_better: bool) -> bool:
    """Beyond chance: the 95% interval's bound on the floor's side clears it. Run folders written
    before intervals existed (no `<figure>_ci`) compare the bare figure."""
    ci = metrics.get(f"{ours}_ci")
    value = (ci[1] if lower_is_better else ci[0]) if ci else metrics[ours]
    return value < metrics[floor] if lower_is_better else value > metrics[floor]


def beats_baseline(metrics: dict[str, Any]) -> bool | None:
    """Whether the trained model beats, beyond chance, the floor a model that learned nothing
    reaches: the majority-class baseline (on accuracy, else F1) or the unigram perplexity, by the
    95% interval of its test figure (its lower bound above the floor; a perplexity's upper bound
    below it); None when the run has no such figure to compare."""
    for ours, floor, lower_is_better, _ in _FLOORS:
        if ours in metrics and floor in metrics:
            return _beats(metrics, ours, floor, lower_is_better)
    return None


def _interval(metrics: dict[str, Any], key: str, how: str) -> str:
    ci = metrics.get(f"{key}_ci")
    return f" (95% interval {ci[0]:.4g}-{ci[1]:.4g}, {how})" if ci else ""


def baseline_comparison(metrics: dict[str, Any]) -> list[str]:
    """Each test figure with its interval against its floor, and whether the interval clears it."""
    lines = []
    for ours, floor, lower_is_better, how in _FLOORS:
        if ours in metrics and floor in metrics:
            state = "beaten beyond chance" if _beats(metrics, ours, floor, lower_is_better) else "not beaten beyond chance"
            lines.append(f"{ours[len('eval_'):]} {metrics[ours]:.4g}{_interval(metrics, ours, how)} vs "
                         f"{floor.split('_')[0]} {metrics[floor]:.4g}: {state}")
    return lines


def baseline_verdict(metrics: dict[str, Any]) -> str | None:
    """One line when the trained model does not beat its floor beyond chance (see `beats_baseline`)."""
    if beats_baseline(metrics) is not False:
        return None
    if "majority_accuracy" in metrics:
        metric = "accuracy" if "eval_accuracy" in metrics else "f1"
        how = "Wilson" if metric == "accuracy" else "bootstrap"
        return (f"the model does not beat the majority-class baseline beyond chance: {metric} "
                f"{metrics[f'eval_{metric}']:.4f}{_interval(metrics, f'eval_{metric}', how)} vs "
                f"{metrics[f'majority_{metric}']:.4f} for always answering '{metrics.get('majority_label')}'")
    return (f"the model does not beat the unigram floor beyond chance: perplexity {metrics['eval_perplexity']:.4g}"
            f"{_interval(metrics, 'eval_perplexity', 'bootstrap over eval blocks')} vs "
            f"{metrics['unigram_perplexity']:.4g} for token frequencies alone")


def progress_lines(metrics: dict[str, Any]) -> list[str]:
    """How far training got (epochs, the loss's course, the tail's slope) and its warnings, from
    `training_progress` (absent in run folders written before it existed)."""
    record = metrics.get("training_progress")
    if not record:
        return []
    from ptft_hf.training.progress import Progress

    progress = Progress(**record)
    return [progress.summary()] + [f"**Warning: {w}.**" for w in progress.warnings()]


def write_report(run_dir: Path, metrics: dict[str, Any], samples: list[dict[str, str]]) -> Path:
    """A short markdown summary of the run beside `metrics.json`."""
    keys = [
        "eval_perplexity_before", "eval_perplexity", "eval_perplexity_ci", "unigram_perplexity", "eval_accuracy_before",
        "eval_accuracy", "eval_accuracy_ci", "majority_accuracy", "eval_f1_before", "eval_f1", "eval_f1_ci", "majority_f1",
        "train_loss", "train_tokens_per_second", "parameters", "trainable_parameters", "wall_time_s",
    ]
    lines = [f"# Run report: {metrics.get('run_name', run_dir.name)}", ""]
    verdict = baseline_verdict(metrics)
    if verdict:
        lines += [f"**Learned nothing useful: {verdict}.**", ""]
    comparison = baseline_comparison(metrics)
    if comparison:
        lines += ["Against the baseline: " + "; ".join(comparison) + ".", ""]
    progress = progress_lines(metrics)
    if progress:
        lines += ["Training: " + progress[0] + ".", "", *(line for w in progress[1:] for line in (w, ""))]
    lines += ["| metric | value |", "|---|---|"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
            if isinstance(value, list):
                value = " – ".join(f"{v:.4g}" for v in value)
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    if metrics.get("padding"):
        lines.append(f"| padded share of training tokens | {metrics['padding']['padded_share']:.2%} |")
    lines += ["", "![loss](loss.png)", ""]
    if samples:
        lines += ["## Samples after training", ""]
    for s in samples:
        completion = " ".join(s["completion"].split())  # one line per sample in the table
        lines.append(f"- **{s['prompt']}**{completion}")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
