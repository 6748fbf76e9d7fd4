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


def plot_loss(log_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Train loss (per logging step) and eval loss (per evaluation) against the step."""
    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not train and not evals:
        return None
    # imported here: only the process that writes the report pays for matplotlib (~1 s); not pyplot,
    # saving a PNG must not change a notebook's backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return Path(out_path)


def beats_baseline(metrics: dict[str, Any]) -> bool | None:
    """Whether the trained model beats the floor a model that learned nothing reaches: the
    majority-class baseline (on accuracy, else F1) or the unigram perplexity; None when the run
    has no such figure to compare."""
    for ours, floor, lower_is_better in (("eval_accuracy", "majority_accuracy", False), ("eval_f1", "majority_f1", False),
                                         ("eval_perplexity", "unigram_perplexity", True)):
        if ours in metrics and floor in metrics:
            return metrics[ours] < metrics[floor] if lower_is_better else metrics[ours] > metrics[floor]
    return None


def baseline_verdict(metrics: dict[str, Any]) -> str | None:
    """One line when the trained model does not beat its floor (see `beats_baseline`)."""
    if beats_baseline(metrics) is not False:
        return None
    if "majority_accuracy" in metrics:
        metric = "accuracy" if "eval_accuracy" in metrics else "f1"
        return (f"the model does not beat the majority-class baseline: {metric} {metrics[f'eval_{metric}']:.4f} vs "
                f"{metrics[f'majority_{metric}']:.4f} for always answering '{metrics.get('majority_label')}'")
    return (f"the model does not beat the unigram floor: perplexity {metrics['eval_perplexity']:.4g} vs "
            f"{metrics['unigram_perplexity']:.4g} for token frequencies alone")


def write_report(run_dir: Path, metrics: dict[str, Any], samples: list[dict[str, str]]) -> Path:
    """A short markdown summary of the run beside `metrics.json`."""
    keys = [
        "eval_perplexity_before", "eval_perplexity", "unigram_perplexity", "eval_accuracy_before", "eval_accuracy",
        "majority_accuracy", "eval_f1_before", "eval_f1", "majority_f1", "train_loss", "train_tokens_per_second", "parameters", "trainable_parameters",
        "wall_time_s",
    ]
    lines = [f"# Run report: {metrics.get('run_name', run_dir.name)}", ""]
    verdict = baseline_verdict(metrics)
    if verdict:
        lines += [f"**Learned nothing useful: {verdict}.**", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
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
