"""The evaluation matrix in markdown, for the top of a pipeline's report.md: the table (nodes, then
anchors), the heatmap, the zero/k-shot controls beside each specialist, BLiMP before and after each
specialist (forgetting on a standard task, with and without replay), and how the cells were made."""

from __future__ import annotations

from typing import Any

from ptft_hf.evaluation.matrix import HEATMAP_FILE
from ptft_hf.evaluation.task_files import LABEL_TASKS, task_family


def _value(cell: dict[str, Any] | None, with_stderr: bool = True) -> str:
    if not cell:
        return "–"
    if "na" in cell:
        return cell["na"]
    v = cell.get("value")
    if v is None:
        return "–"
    text = f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if with_stderr and cell.get("stderr") not in (None, 0.0) and v < 10:
        text += f" ± {cell['stderr']:.3f}"
    return text


def _limited(record: dict[str, Any], task: str, n: int) -> str:
    """How a limit of n documents was taken: a seeded sample of a labelled task (matrices since the
    seeded document order; earlier ones took the label-sorted file's first n), else the first n."""
    if task_family(task) in LABEL_TASKS and record.get("document_order_seed") is not None:
        return f"{n} sampled"
    return f"first {n}"


def _note(cell: dict[str, Any], default_limit: Any, record: dict[str, Any], task: str) -> str:
    marks = []
    if cell.get("limit") != default_limit and "value" in cell and cell.get("scorer", "").startswith("lm-eval"):
        marks.append("all" if cell.get("limit") is None else _limited(record, task, cell["limit"]))
    if str(cell.get("scorer", "")).startswith("its classification head"):
        marks.append("head")
    return f" ({', '.join(marks)})" if marks else ""


def matrix_table(record: dict[str, Any]) -> list[str]:
    tasks = record["tasks"]
    arrows = {t: ("↑" if record["metrics"][t]["higher_is_better"] else "↓") for t in tasks}
    head = "| model | role | " + " | ".join(f"{t} ({record['metrics'][t]['metric']} {arrows[t]})" for t in tasks) + " |"
    lines = [head, "|---|---|" + "---|" * len(tasks)]
    for name, row in record["rows"].items():
        cells = [_value(row["cells"].get(t)) + _note(row["cells"].get(t) or {}, record["limit"].get(t), record, t) for t in tasks]
        own = row.get("own_task")
        cells = [f"**{c}**" if t == own and c[:1].isdigit() else c for t, c in zip(tasks, cells)]
        lines.append(f"| `{name}` | {row['role']} | " + " | ".join(cells) + " |")
    for name, cells in record["anchors"].items():
        lines.append(f"| {name} | anchor | " + " | ".join(_value(cells.get(t)) if t in cells else "" for t in tasks) + " |")
    return lines


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f} pts"


def controls_table(record: dict[str, Any]) -> list[str]:
    if not record["controls"]:
        return []
    lines = ["| specialist | task | its score | starts from | 0-shot | k-shot | k | margin over best control |",
             "|---|---|---|---|---|---|---|---|"]
    for c in record["controls"]:
        m = c.get("margin")
        if m is None:
            words = "–"
        elif m["higher_is_better"]:
            words = f"{_points(c['specialist_score']['value'], m['best_value'])} over {m['best_control']}"
        else:
            words = f"{m['difference']:+.3f} bits per byte against {m['best_control']} (lower is better)"
        kshot = _value(c.get("k_shot")) if c.get("k_shot") else "–"
        limit = (c.get("k_shot") or {}).get("limit")
        kshot += f" ({_limited(record, c['task'], limit)})" if c.get("k_shot") and limit else ""
        lines.append(f"| `{c['specialist']}` | {c['task']} | {_value(c['specialist_score'])} | `{c['base']}` | "
                     f"{_value(c['zero_shot'])} | {kshot} | {c['k'] if c['k'] is not None else '0 only'} | {words} |")
    lines.append("")
    rules = sorted({f"{c['task']}: {c['k_rule']}" for c in record["controls"]})
    lines += [f"- k for {rule}" for rule in rules]
    return lines


def _like_for_like(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell at the matrix's limit: the general model's full BLiMP carries its limited twin."""
    return cell.get("same_limit") or cell


def blimp_lines(record: dict[str, Any]) -> list[str]:
    """The general model's BLiMP beside the random-initialised model's and the 5-gram's, and each
    specialist's BLiMP change from its base (like for like: the same documents)."""
    benchmark = next((t for t in record["general_tasks"] if task_family(t) == "blimp"), None)
    rows = record["rows"]
    if benchmark is None or record["general"] not in rows:
        return []
    general = rows[record["general"]]["cells"].get(benchmark) or {}
    lines = []
    if general.get("value") is not None:
        ngram = next((c[benchmark]["value"] for n, c in record["anchors"].items() if "5-gram" in n and benchmark in c), None)
        random = (rows.get("random-init") or {}).get("cells", {}).get(benchmark) or {}
        text = f"- general model `{record['general']}`, BLiMP in full: {100 * general['value']:.1f}%"
        if ngram is not None:
            text += f" (the paper's 5-gram: {100 * ngram:.1f}%, {_points(general['value'], ngram)})"
        if random.get("value") is not None:
            same = _like_for_like(general)
            pairs = "all pairs" if random.get("limit") is None else f"the first {random['limit']} pairs per paradigm"
            text += (f"; random-initialised model {100 * random['value']:.1f}% on {pairs}, where the general model has "
                     f"{100 * same['value']:.1f}%: {_points(same['value'], random['value'])}")
        lines.append(text)
    for name, row in rows.items():
        if row["role"] not in ("specialist",) or row["base"] not in rows:
            continue
        after, before = row["cells"].get(benchmark) or {}, _like_for_like(rows[row["base"]]["cells"].get(benchmark) or {})
        if after.get("value") is None or before.get("value") is None:
            why = after.get("na") or before.get("na") or "not scored"
            lines.append(f"- `{name}` (from `{row['base']}`): BLiMP change {why}")
            continue
        replay = f", {100 * row['replay']:.0f}% replayed" if row.get("replay") else ", no replay"
        lines.append(f"- `{name}` (from `{row['base']}`{replay}): BLiMP {100 * before['value']:.1f}% → "
                     f"{100 * after['value']:.1f}% ({_points(after['value'], before['value'])}; "
                     f"standard error about {100 * (after.get('stderr') or 0):.1f} pts)")
    return lines


def matrix_lines(record: dict[str, Any]) -> list[str]:
    """The matrix section of report.md (goes first)."""
    limits = {t: v for t, v in record["limit"].items() if v}
    fewshot_limits = {t: v for t, v in record["fewshot_limit"].items() if v}
    lines = ["## Evaluation matrix", "",
             f"Every node on the general benchmark ({', '.join(record['general_tasks'])}) and on every stage's own "
             f"task (bold); `eval_matrix.json` holds each cell with its standard error, limit, shots and scorer. "
             f"{record['seconds']:.0f} s on {record['device']} ({record['dtype']}, batch {record['batch_size']}).", "",
             f"![evaluation matrix]({HEATMAP_FILE})", "",
             *matrix_table(record), ""]
    notes = []
    if limits:
        how = ("N documents: the first N of one seeded shuffle for the labelled tasks, the first N otherwise; "
               "BLiMP: N pairs per paradigm" if record.get("document_order_seed") is not None
               else "the first N documents; BLiMP: N pairs per paradigm")
        notes.append(f"limits ({how}), in every cell but the general "
                     f"model's general benchmark, scored in full: {', '.join(f'{t} {n}' for t, n in limits.items())}")
    if fewshot_limits:
        notes.append(f"k-shot controls on {', '.join(f'{_limited(record, t, n)} ({t})' for t, n in fewshot_limits.items())} documents")
    classifiers = [n for n, r in record["rows"].items() if r.get("read_as", "") and "classifier" in (r.get("read_as") or "")]
    if classifiers:
        notes.append(f"classifier rows ({', '.join(f'`{n}`' for n in classifiers)}): their own task is their head's test "
                     "accuracy (metrics.json, all test documents); BLiMP and perplexities score the fine-tuned body read "
                     "as a causal LM through its tied input embeddings (the score head dropped); another label set is n/a")
    if record.get("not_held_out"):
        notes.append(f"{', '.join(f'`{n}`' for n in record['not_held_out'])} trained on the texts its own task scores: "
                     "that cell is not a held-out score")
    notes.append("wikitext2 and legal: bits per byte of whole held-out documents (rolling windows; lower is better, "
                 "the same for any tokenizer); a difference smaller than about two standard errors is not a difference")
    lines += [f"- {n}" for n in notes]
    blimp = blimp_lines(record)
    if blimp:
        lines += ["", "### BLiMP: the general model, and before → after each specialist (forgetting)", "", *blimp]
    controls = controls_table(record)
    if controls:
        lines += ["", "### Zero- and few-shot controls (each specialist's starting model on its task)", "", *controls]
    return [*lines, ""]
