"""Run artefacts a person reads: the loss plot and `report.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # not pyplot: saving a PNG must not change a notebook's backend


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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _reference_pairs(metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(name, before, after) for every reference eval set of a run (`eval_<name>_perplexity`)."""
    pairs = []
    for key, after in metrics.items():
        if key.startswith("eval_") and key.endswith("_perplexity") and key != "eval_perplexity":
            before = metrics.get(f"{key}_before")
            if before is not None:
                pairs.append((key[len("eval_"):-len("_perplexity")], before, after))
    return pairs


def quality_summary(m: dict[str, Any]) -> str:
    """The stage's headline eval figure, before → after: perplexity for LMs, accuracy/F1 otherwise."""
    if "eval_perplexity" in m:
        exact = f"; exact match {_fmt(m['eval_exact_match'])}" if "eval_exact_match" in m else ""
        return f"perplexity {_fmt(m.get('eval_perplexity_before'))} → {_fmt(m['eval_perplexity'])}{exact}"
    parts = [f"{name} {_fmt(m.get(f'eval_{name}_before'))} → {_fmt(m.get(f'eval_{name}'))}"
             for name in ("accuracy", "f1") if f"eval_{name}" in m]
    return "; ".join(parts) or "–"


def stage_purpose(m: dict[str, Any]) -> str:
    """What a stage was for: pretraining (an LM from scratch), continued pretraining (full LM
    training of a checkpoint), fine-tuning, or a control (random weights)."""
    from ptft_hf.objectives import find_objective
    from ptft_hf.strategies import find_strategy

    language_modelling = getattr(find_objective(str(m.get("objective"))), "language_modelling", False)
    if m.get("random_init"):
        return "control (random weights)"
    if not m.get("base_model"):
        return "pretraining" if language_modelling else "training from scratch"
    if language_modelling and not getattr(find_strategy(str(m.get("strategy"))), "saves_adapter_only", True):
        return "continued pretraining"
    return "fine-tuning"


def _data_words(m: dict[str, Any]) -> str:
    mixture = m.get("data_mixture") or {}
    others = [f"{100 * part['weight']:.0f}% {name}" for name, part in mixture.items() if name != m["data"]]
    return m["data"] + (f" (+ {', '.join(others)})" if others else "")


def _seed_table(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> list[str]:
    """Pretraining against each fine-tuning, one column per stage: purpose, data, cost, update."""
    names = list(stages)
    first = stages[names[0]].get("train_flops_estimate") or 0.0

    def flops(m: dict[str, Any]) -> str:
        value = m.get("train_flops_estimate")
        if value is None:
            return "–"
        return f"{value:.3g}" + (f" ({value / first:.2f}x)" if first and m is not stages[names[0]] else "")

    def base(name: str) -> str:
        init_from = getattr(configs.get(name), "init_from", None)
        return f"stage `{init_from}`" if init_from else "its config (random weights)" if not stages[name].get("base_model") \
            else "a checkpoint"

    def forgetting(m: dict[str, Any]) -> str:
        return "; ".join(f"{n} {_fmt(b)} → {_fmt(a)} ({100.0 * (a / b - 1.0):+.1f}%)" for n, b, a in _reference_pairs(m)) or "–"

    rows = [
        ("purpose", lambda n, m: stage_purpose(m)),
        ("starts from", lambda n, m: base(n)),
        ("objective, strategy", lambda n, m: f"{m['objective']}, {m['strategy']}"),
        ("data", lambda n, m: _data_words(m)),
        ("documents / tokens", lambda n, m: f"{m['data_train'].get('documents', '–')} / {m['data_train'].get('tokens', '–')}"),
        ("tokens trained", lambda n, m: _fmt(m.get("train_tokens"))),
        ("wall time (s)", lambda n, m: _fmt(m.get("wall_time_s"))),
        (f"est. training FLOPs (x `{names[0]}`)", lambda n, m: flops(m)),
        ("peak memory (MB)", lambda n, m: _fmt(m.get("peak_memory_mb"))),
        ("parameters updated", lambda n, m: f"{m['trainable_percent']:.2f}% ({m['trainable_parameters']:,})"),
        ("saved (MB)", lambda n, m: _fmt(m["saved_bytes"] / 2**20, 3) if m.get("saved_bytes") is not None else "–"),
        ("own eval before → after", lambda n, m: quality_summary(m)),
        ("baseline", lambda n, m: _baseline_words(m)),
        ("general perplexity (forgetting)", lambda n, m: forgetting(m)),
    ]
    lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(n, stages[n]) for n in names) + " |")
    return lines


def _baseline_words(m: dict[str, Any]) -> str:
    verdict = {True: "beaten", False: "**not beaten**", None: "not compared"}[beats_baseline(m)]
    if "majority_accuracy" in m:
        return f"majority class: accuracy {_fmt(m['majority_accuracy'])} ({verdict})"
    if "unigram_perplexity" in m:
        return f"unigram perplexity {_fmt(m['unigram_perplexity'])} ({verdict})"
    return "–"


def _same_task_other_base(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Stages fine-tuned alike from different bases (e.g. with and without a domain-adaptive
    stage): what the base was worth, on the task's own metric."""
    lines = []
    names = [n for n, m in stages.items() if not m.get("random_init") and m.get("lineage")]

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        while name in stages and (stages[name].get("lineage") or {}).get("init_from_stage") not in (None, *seen):
            name = stages[name]["lineage"]["init_from_stage"]
            seen.add(name)
        return seen

    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = stages[first], stages[second]
            if (a["objective"], a["data"], a.get("strategy")) != (b["objective"], b["data"], b.get("strategy")) or \
                    a["lineage"].get("init_from_stage") == b["lineage"].get("init_from_stage") or \
                    first in ancestors(second) or second in ancestors(first):
                continue
            key = next((f"eval_{k}" for k in ("accuracy", "exact_match", "perplexity") if f"eval_{k}" in a and f"eval_{k}" in b), None)
            if key:
                better = "lower" if key == "eval_perplexity" else "higher"
                lines.append(f"- the same fine-tuning from two bases, {key[len('eval_'):]} ({better} is better): `{first}` (from "
                             f"`{a['lineage']['init_from_stage']}`) {_fmt(a[key])} vs `{second}` (from "
                             f"`{b['lineage']['init_from_stage']}`) {_fmt(b[key])}: {a[key] - b[key]:+.4f}")
    return lines


def _replay_share(m: dict[str, Any]) -> float:
    """The share of a stage's training tokens replayed from its base stage's data (0: none)."""
    from ptft_hf.data.mixture import replay_share

    return replay_share(m.get("data_mixture"))


def _with_and_without_replay(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Stages trained alike from the same base, one with `data.replay` and one without: the
    general perplexity replay saved, and what it cost on the stage's own eval."""
    lines = []
    for name, m in stages.items():
        share = _replay_share(m)
        if not share or m.get("random_init"):
            continue
        for other, o in stages.items():
            if other == name or o.get("random_init") or _replay_share(o) or \
                    (o["objective"], o["data"], o.get("strategy")) != (m["objective"], m["data"], m.get("strategy")) or \
                    (o.get("lineage") or {}).get("init_from_stage") != (m.get("lineage") or {}).get("init_from_stage"):
                continue
            with_ref = {ref: (before, after) for ref, before, after in _reference_pairs(m)}
            for ref, before, after in _reference_pairs(o):
                if ref not in with_ref:
                    continue
                b, a = with_ref[ref]
                lines.append(f"- replay against forgetting, {ref} perplexity (lower is better): `{name}` ({100 * share:.0f}% "
                             f"replayed) {_fmt(b)} → {_fmt(a)} ({100.0 * (a / b - 1.0):+.1f}%) vs `{other}` (no replay) "
                             f"{_fmt(before)} → {_fmt(after)} ({100.0 * (after / before - 1.0):+.1f}%); own eval "
                             f"{quality_summary(m)} vs {quality_summary(o)}")
    return lines


def _timing_line(summary: dict[str, Any]) -> str:
    """How long this invocation took, and, when it kept finished stages, what all stages took."""
    stages, kept = summary["stages"], summary.get("stages_kept") or []
    line = f"{len(stages)} stages in {summary['wall_time_s']:.0f} s."
    if kept:
        total = sum(m.get("wall_time_s") or 0.0 for m in stages.values())
        line = (f"{len(stages)} stages: this run trained {len(stages) - len(kept)} in {summary['wall_time_s']:.0f} s and "
                f"kept {len(kept)} finished ones; the stages' own wall times add up to {total:.0f} s.")
    return line


def _stage_settings(stage: Any) -> dict[str, str]:
    """A stage's `key=value` overrides (preset's, then `extra`; the last one wins), `+` dropped."""
    pairs = [o.lstrip("+").split("=", 1) for o in [*getattr(stage, "overrides", []), *getattr(stage, "extra", [])]]
    return {key: value for key, value in (p for p in pairs if len(p) == 2) if key != "model.random_init"}


def _recipe_difference(control: Any, stage: Any) -> str:
    """`; its own recipe: key=value (vs the stage's), ...` where a control is not trained exactly as
    the stage it is compared with (a control tuned for random weights), else ''."""
    if control is None or stage is None:
        return ""
    theirs, ours = _stage_settings(control), _stage_settings(stage)
    differ = [f"{key}={value} (vs {ours.get(key, 'default')})" for key, value in theirs.items() if ours.get(key) != value]
    differ += [f"{key}=default (vs {value})" for key, value in ours.items() if key not in theirs]
    return f"; its own recipe: {', '.join(differ)}" if differ else ""


def write_pipeline_report(run_dir: Path, summary: dict[str, Any], stages: dict[str, Any]) -> Path:
    """The seed's comparison first (pretraining against each fine-tuning: purpose, data, cost and
    parameters updated, one column per stage), then the value of pretraining, then each stage."""
    order = summary.get("stage_order") or list(summary["stages"])
    summary = {**summary, "stages": {name: summary["stages"][name] for name in order}}
    lines = [
        f"# Pipeline report: {run_dir.name}", "",
        _timing_line(summary), "",
        "## Pretraining vs fine-tuning", "",
        *_seed_table(summary["stages"], stages),
    ]
    lines.append("")
    controls = {n: m for n, m in summary["stages"].items() if m.get("random_init")}
    for control_name, control in controls.items():
        for name, m in summary["stages"].items():
            if name == control_name or m.get("random_init") or m["objective"] != control["objective"] or \
                    m["data"] != control["data"] or _replay_share(m) != _replay_share(control):
                continue  # a control is the same fine-tuning (data, replay) from random weights
            for metric in ("accuracy", "f1", "perplexity"):
                key = f"eval_{metric}"
                if key in m and key in control:
                    better = "lower" if metric == "perplexity" else "higher"
                    recipe = _recipe_difference(stages.get(control_name), stages.get(name))
                    lines.append(f"- value of pretraining, {metric} ({better} is better): `{name}` {_fmt(m[key])} vs "
                                 f"`{control_name}` (same data from random weights{recipe}) {_fmt(control[key])}: "
                                 f"{m[key] - control[key]:+.4f}")
    lines += _same_task_other_base(summary["stages"])
    lines += _with_and_without_replay(summary["stages"])
    lines.append("")
    for name, m in summary["stages"].items():
        lines.append(f"## {name}")
        lines.append("")
        lines.append(f"- eval on {m['data']}: {quality_summary(m)}")
        if "majority_accuracy" in m:
            lines.append(f"- majority-class baseline (always `{m.get('majority_label')}`): accuracy "
                         f"{_fmt(m['majority_accuracy'])}, F1 {_fmt(m.get('majority_f1'))}")
        if baseline_verdict(m):
            lines.append(f"- **learned nothing useful: {baseline_verdict(m)}**")
        if "eval_perplexity" in m and m.get("eval_perplexity_before"):
            change = 100.0 * (m["eval_perplexity"] / m["eval_perplexity_before"] - 1.0)
            lines.append(f"- eval perplexity change: {change:+.1f}%")
        for ref, before, after in _reference_pairs(m):
            lines.append(f"- general perplexity on {ref}: {_fmt(before)} → {_fmt(after)} "
                         f"({100.0 * (after / before - 1.0):+.1f}%)")
        if m.get("lineage"):
            lineage = m["lineage"]
            lines.append(f"- base: stage `{lineage['init_from_stage']}` ({lineage['base_run_dir']}), "
                         f"config sha256 `{lineage['base_config_sha256'][:16]}…`"
                         + (" (architecture and tokenizer only: random weights)" if m.get("random_init") else ""))
        if m.get("sample"):
            completion = " ".join(m["sample"]["completion"].split())
            lines.append(f"- sample: **{m['sample']['prompt']}**{completion}")
        lines += ["", f"![{name} loss]({name}/loss.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
