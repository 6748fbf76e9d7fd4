"""Run artefacts a person reads: the loss plot and `report.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; notebooks display the saved PNG or their own figure
import matplotlib.pyplot as plt  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(6, 4))
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
    plt.close(fig)
    return Path(out_path)


def write_report(run_dir: Path, metrics: dict[str, Any], samples: list[dict[str, str]]) -> Path:
    """A short markdown summary of the run beside `metrics.json`."""
    keys = [
        "eval_perplexity_before", "eval_perplexity", "unigram_perplexity", "train_loss",
        "train_tokens_per_second", "parameters", "trainable_parameters", "wall_time_s",
    ]
    lines = [f"# Run report: {metrics.get('run_name', run_dir.name)}", "", "| metric | value |", "|---|---|"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "![loss](loss.png)", "", "## Samples after training", ""]
    for s in samples:
        completion = " ".join(s["completion"].split())  # one line per sample in the table
        lines.append(f"- **{s['prompt']}**{completion}")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
