"""The README's result figures, generated from the results files (never copied by hand).

    python -m benchmarks.readme_tables collect PIPELINE_OR_RUN NAME [--command "..."]  # -> benchmarks/results/NAME.json
    python -m benchmarks.readme_tables                 # rewrite the README's marked blocks from benchmarks/results/
    python -m benchmarks.readme_tables --check         # exit 1 (with a diff) when the README is not what they give

`collect` keeps what a finished pipeline (or run) folder measured: its `metrics.json` (every
stage's figures, machine paths left out), its `eval_matrix.json` when it has one, and how it was
made (the command, the date, the CPU's bf16 support, the library versions). A README block is
marked by the renderer that fills it and the results files it reads:

    <!-- results: pipeline_table seed_cases_2026-12-06_seed42 -->
    ...generated...
    <!-- /results -->

tests/unit/test_readme_tables.py regenerates every block from the committed results files and
checks the README byte for byte.
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


# --- collect ----------------------------------------------------------------------------------------

def _without_machine_paths(value: Any, folder: Path) -> Any:
    """Absolute paths (run folders, base models) differ by machine: inside the folder they are kept
    relative to it, outside it as their last two parts."""
    if isinstance(value, dict):
        return {k: _without_machine_paths(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_machine_paths(v, folder) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(Path(*path.parts[-2:]))
    return value


def _machine() -> dict[str, Any]:
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "datasets", "lm-eval"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return {"cpu_avx512_bf16": "avx512_bf16" in flags, "processor": platform.processor() or platform.machine(),
            "versions": versions}


def collect(folder: Path | None, name: str, command: str, runs: dict[str, Path] | None = None) -> Path:
    """benchmarks/results/NAME.json from a finished pipeline or run folder, or from separate run
    folders kept side by side as stages (`runs`: stage name -> folder; e.g. a specialist and its
    control trained outside a pipeline)."""
    if runs:
        stages = {stage: json.loads((path / "metrics.json").read_text()) for stage, path in runs.items()}
        metrics, kind = {"stages": stages, "stage_order": list(runs)}, "runs"
        common = next(iter(runs.values())).resolve().parent
    else:
        metrics = json.loads((folder / "metrics.json").read_text())
        kind, common = ("pipeline" if "stages" in metrics else "run"), folder.resolve()
    record: dict[str, Any] = {"name": name, "command": command, "date": date.today().isoformat(), "machine": _machine(),
                              "kind": kind, "metrics": _without_machine_paths(metrics, common)}
    if kind != "run":
        folders = runs or {stage: folder / stage for stage in metrics["stages"]}
        record["paired"] = _paired_tests(folders, metrics["stages"])
    matrix = (folder or Path("/nonexistent")) / "eval_matrix.json"
    if folder is not None and matrix.is_file():
        record["eval_matrix"] = _without_machine_paths(json.loads(matrix.read_text()), folder.resolve())
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return out


def _paired_tests(folders: dict[str, Path], stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """McNemar's exact test of each classifier stage against each of its random-weights controls,
    on their per-example test correctness (`test_predictions.jsonl`), kept as `"stage vs control"`."""
    from ptft_hf.pipeline.report import read_correctness
    from ptft_hf.training.significance import mcnemar

    paired = {}
    for stage in stages:
        for control in _controls(stages, stage):
            ours, theirs = read_correctness(folders[stage]), read_correctness(folders[control])
            if ours is not None and theirs is not None and len(ours) == len(theirs):
                test = mcnemar(ours, theirs)
                paired[f"{stage} vs {control}"] = {"only_stage": test.only_a, "only_control": test.only_b,
                                                   "p_value": test.p_value}
    return paired


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


# --- renderers ----------------------------------------------------------------------------------------

def _g(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _own_metric(m: dict[str, Any]) -> tuple[str, bool] | None:
    """The stage's headline test metric and whether higher is better."""
    if "eval_accuracy" in m and "eval_perplexity" not in m:
        return "accuracy", True
    if "eval_perplexity" in m:
        return "perplexity", False
    return None


def _validation(m: dict[str, Any]) -> str:
    found = _own_metric(m)
    return _g(m.get(f"validation_{found[0]}")) if found else "–"


def _general_change(m: dict[str, Any]) -> str:
    from ptft_hf.training.run_metrics import reference_perplexities

    return "; ".join(f"{b:.4g} → {a:.4g} ({100.0 * (a / b - 1.0):+.1f}%)" for _, b, a in reference_perplexities(m)) or "–"


def pipeline_table(names: list[str]) -> str:
    """One row per stage: role, test figure before → after, validation, baseline, general
    perplexity (what specialising cost), wall time."""
    from ptft_hf.pipeline.report import quality_summary, stage_purpose

    [name] = names
    result = load(name)
    stages = result["metrics"]["stages"]
    order = result["metrics"].get("stage_order", list(stages))
    lines = ["| stage | role | data | test: before → after | validation | baseline | general perplexity | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in order:
        m = stages[stage]
        base = (m.get("lineage") or {}).get("init_from_stage")
        role = stage_purpose(m) + (f" from `{base}`" if base and not m.get("random_init") else "")
        baseline = (f"majority {_g(m['majority_accuracy'])}" if "majority_accuracy" in m
                    else f"unigram {_g(m['unigram_perplexity'])}" if "unigram_perplexity" in m else "–")
        lines.append(f"| `{stage}` | {role} | {m.get('data', '–')} | {quality_summary(m)} | {_validation(m)} | {baseline} "
                     f"| {_general_change(m)} | {m.get('wall_time_s', 0) / 60:.1f} min |")
    total = sum(stages[s].get("wall_time_s", 0) for s in order)
    lines.append("")
    lines.append(f"`{name}`: `{result['command']}`, {result['date']}; the stages' own wall times add up to "
                 f"{total / 60:.1f} minutes (CPU {'with' if result['machine']['cpu_avx512_bf16'] else 'without'} AVX-512 BF16).")
    return "\n".join(lines)


def _controls(stages: dict[str, dict[str, Any]], stage: str) -> list[str]:
    """The random-weights stages trained on the same data with the same objective as `stage` (none
    for a control itself or a stage trained from its config)."""
    m = stages[stage]
    if m.get("random_init") or not ((m.get("lineage") or {}).get("init_from_stage") or m.get("base_model")):
        return []
    return [n for n, c in stages.items() if c.get("random_init") and c.get("data") == m.get("data")
            and c.get("objective") == m.get("objective")]


def pretraining_margins(names: list[str]) -> str:
    """Each specialist against its random-weights controls on its own test metric, one column per
    results file (a seed each)."""
    results = [load(n) for n in names]
    first = results[0]["metrics"]["stages"]
    lines = ["| specialist | control | metric | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for stage, m in first.items():
        found = _own_metric(m)
        for control in _controls(first, stage):
            if not found:
                continue
            metric, higher = found
            cells = []
            for result in results:
                stages = result["metrics"]["stages"]
                if stage not in stages or control not in stages:
                    cells.append("–")
                    continue
                ours, theirs = stages[stage][f"eval_{metric}"], stages[control][f"eval_{metric}"]
                test = result.get("paired", {}).get(f"{stage} vs {control}")
                paired = ""
                if test:
                    p = f"p = {test['p_value']:.2g}" if test["p_value"] > 0 else "p < 1e-300"
                    paired = f"; McNemar {p}, {test['only_stage']}/{test['only_control']} discordant"
                cells.append(f"{_g(ours)} vs {_g(theirs)} ({ours - theirs:+.4g}{paired})")
            lines.append(f"| `{stage}` | `{control}` | {metric} ({'higher' if higher else 'lower'} is better) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_matrix(names: list[str]) -> str:
    """The pipeline's evaluation matrix (every node on BLiMP and every stage's task, the anchors),
    then the zero/k-shot controls and the BLiMP lines, as report.md gives them."""
    from ptft_hf.evaluation.matrix_report import blimp_lines, controls_table, matrix_table

    [name] = names
    record = load(name)["eval_matrix"]
    limits = ", ".join(f"{task} {n}" for task, n in record["limit"].items() if n)
    lines = [*matrix_table(record), ""]
    if limits:
        how = ("N documents: the first N of one seeded shuffle for the labelled tasks, the first N otherwise; BLiMP: "
               "N pairs per paradigm" if record.get("document_order_seed") is not None
               else "the first N documents; BLiMP: N pairs per paradigm")
        lines += [f"Limits ({how}) in every cell but the general model's "
                  f"BLiMP, scored in full: {limits}. {record['seconds'] / 60:.1f} minutes on {record['device']} "
                  f"({record['dtype']}).", ""]
    lines += [*controls_table(record), "", *blimp_lines(record)]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def recipe_choice(names: list[str]) -> str:
    """Candidate recipes (one results file's stages, e.g. a learning-rate sweep at one seed) by their
    validation figure; the chosen one is the sweep's choice (`ptft_hf.sweep.chosen_on_validation`),
    the others' test figures are reported, not used."""
    from ptft_hf.sweep import chosen_on_validation

    [name] = names
    result = load(name)
    stages = result["metrics"]["stages"]
    order = result["metrics"].get("stage_order", list(stages))
    chosen = chosen_on_validation([{"job": stage, **stages[stage]} for stage in order])
    lines = ["| candidate | validation accuracy | test accuracy (reported, not used to choose) |", "|---|---|---|"]
    for stage in order:
        m = stages[stage]
        mark = " (chosen)" if chosen is not None and stage == chosen["job"] else ""
        lines.append(f"| `{stage}`{mark} | {_g(m.get('validation_accuracy'))} | {_g(m.get('eval_accuracy'))} |")
    lines += ["", f"`{name}`: `{result['command']}`, {result['date']}."]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[list[str]], str]] = {
    "eval_matrix": eval_matrix,
    "recipe_choice": recipe_choice,
    "pipeline_table": pipeline_table,
    "pretraining_margins": pretraining_margins,
}


def render(text: str) -> str:
    """`text` with every marked block regenerated from its results files."""
    def fill(match: re.Match) -> str:
        kind, *names = match["spec"].split()
        if kind not in RENDERERS:
            raise SystemExit(f"readme_tables: unknown renderer {kind!r} in a results marker; known: {', '.join(RENDERERS)}")
        return match.group(1) + RENDERERS[kind](names) + "\n" + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme_tables", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action")
    gather = sub.add_parser("collect", help="keep a finished pipeline's or run's figures in benchmarks/results/NAME.json")
    gather.add_argument("folder", type=Path, nargs="?", help="a pipeline or run folder (or --stage ...)")
    gather.add_argument("name")
    gather.add_argument("--stage", action="append", default=[], metavar="NAME=FOLDER",
                        help="separate run folders kept as the stages of one record (repeat)")
    gather.add_argument("--command", default="", help="the command that made it, as the README shows it")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs from what the results give")
    args = parser.parse_args(argv)
    if args.action == "collect":
        runs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.stage)}
        print(collect(args.folder, args.name, args.command, runs or None))
        return 0
    now = README.read_text()
    wanted = render(now)
    if args.check:
        if wanted != now:
            sys.stdout.writelines(difflib.unified_diff(now.splitlines(True), wanted.splitlines(True), "README.md", "generated"))
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
