"""The pipeline report (`report.md` beside the stages): the seed's table (pretraining against each
fine-tuning: purpose, data, cost, parameters updated), the value of pretraining against the random-
weights controls, replay against forgetting, then each stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptft_hf.data.mixture import replay_share
from ptft_hf.training.report import TEST_PREDICTIONS, baseline_comparison, baseline_verdict, beats_baseline, progress_lines
from ptft_hf.training.significance import mcnemar
from ptft_hf.training.run_metrics import reference_perplexities


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


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


def _seed_table_rows(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> list[tuple[str, Any]]:
    """The seed's table, a row per property: (label, cell(stage name, metrics) -> text)."""
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
        return "; ".join(f"{n} {_fmt(b)} → {_fmt(a)} ({100.0 * (a / b - 1.0):+.1f}%)" for n, b, a in reference_perplexities(m)) or "–"

    return [
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


def seed_table_column(name: str, stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> dict[str, str]:
    """One stage's column of the seed's table ({label: text}), as the tracker logs it."""
    return {label: cell(name, stages[name]) for label, cell in _seed_table_rows(stages, configs)}


def _seed_table(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> list[str]:
    """Pretraining against each fine-tuning, one column per stage: purpose, data, cost, update."""
    names = list(stages)
    lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for label, cell in _seed_table_rows(stages, configs):
        lines.append(f"| {label} | " + " | ".join(cell(n, stages[n]) for n in names) + " |")
    return lines


def _baseline_words(m: dict[str, Any]) -> str:
    verdict = {True: "beaten", False: "**not beaten**", None: "not compared"}[beats_baseline(m)]
    key = "eval_accuracy" if "majority_accuracy" in m else "eval_perplexity"
    ci = m.get(f"{key}_ci")
    if ci:  # the verdict is the interval's: beyond chance
        verdict += f" beyond chance: 95% interval {_fmt(ci[0])}-{_fmt(ci[1])}"
    if "majority_accuracy" in m:
        return f"majority class: accuracy {_fmt(m['majority_accuracy'])} ({verdict})"
    if "unigram_perplexity" in m:
        return f"unigram perplexity {_fmt(m['unigram_perplexity'])} ({verdict})"
    return "–"


def read_correctness(stage_dir: Path) -> list[bool] | None:
    """A classifier stage's per-example correctness on its test set (`test_predictions.jsonl`);
    None for stages that wrote none (LMs, run folders written before the file existed)."""
    path = stage_dir / TEST_PREDICTIONS
    if not path.exists():
        return None
    return [bool(json.loads(line)["correct"]) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def paired_words(stage_dir: Path, control_dir: Path) -> str:
    """`; significant|within noise (McNemar's exact test, p = ...; ...)` for a stage against its
    control on the same test examples; '' where either lacks per-example predictions."""
    ours, theirs = read_correctness(stage_dir), read_correctness(control_dir)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return ""
    test = mcnemar(ours, theirs)
    verdict = "**significant**" if test.significant else "within noise"
    p = f"p = {test.p_value:.3g}" if test.p_value > 0 else "p < 1e-300"  # below a double's range: printed as a bound
    return (f"; {verdict} (McNemar's exact test, {p}: {test.only_a} test examples right only "
            f"with pretraining, {test.only_b} only without)")


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
            with_ref = {ref: (before, after) for ref, before, after in reference_perplexities(m)}
            for ref, before, after in reference_perplexities(o):
                if ref not in with_ref:
                    continue
                b, a = with_ref[ref]
                lines.append(f"- replay against forgetting, {ref} perplexity (lower is better): `{name}` ({100 * share:.0f}% "
                             f"replayed) {_fmt(b)} → {_fmt(a)} ({100.0 * (a / b - 1.0):+.1f}%) vs `{other}` (no replay) "
                             f"{_fmt(before)} → {_fmt(after)} ({100.0 * (after / before - 1.0):+.1f}%); own eval "
                             f"{quality_summary(m)} vs {quality_summary(o)}")
    return lines


def timing_line(summary: dict[str, Any]) -> str:
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


def write_pipeline_report(run_dir: Path, summary: dict[str, Any], stages: dict[str, Any],
                          matrix: dict[str, Any] | None = None) -> Path:
    """The evaluation matrix when there is one (`matrix:`), then the seed's comparison (pretraining
    against each fine-tuning: purpose, data, cost and parameters updated, one column per stage), then
    the value of pretraining, then each stage."""
    from ptft_hf.evaluation.matrix_report import matrix_lines

    order = summary.get("stage_order") or list(summary["stages"])
    summary = {**summary, "stages": {name: summary["stages"][name] for name in order}}
    lines = [
        f"# Pipeline report: {run_dir.name}", "",
        timing_line(summary), "",
        *(matrix_lines(matrix) if matrix else []),
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
                                 f"{m[key] - control[key]:+.4f}"
                                 + (paired_words(run_dir / name, run_dir / control_name) if metric == "accuracy" else ""))
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
        if m.get("eval_accuracy_ci") or m.get("eval_perplexity_ci"):
            lines.append(f"- against the baseline: {'; '.join(baseline_comparison(m))}")
        progress = progress_lines(m)
        if progress:
            lines.append(f"- training: {progress[0]}")
            lines += [f"- {warning}" for warning in progress[1:]]
        if "eval_perplexity" in m and m.get("eval_perplexity_before"):
            change = 100.0 * (m["eval_perplexity"] / m["eval_perplexity_before"] - 1.0)
            lines.append(f"- eval perplexity change: {change:+.1f}%")
        for ref, before, after in reference_perplexities(m):
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
