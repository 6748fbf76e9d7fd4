"""The evaluation matrix of a pipeline: every node of the tree (the random-initialised model of the
first stage's architecture, every stage, the random-weights controls) scored on the general benchmark
(`matrix.tasks`, BLiMP by default) and on every stage's own task (its data's task, `DATA_TASKS`),
beside anchor rows (the BLiMP paper's models; majority class, Naive Bayes and a TF-IDF SVM on the
labelled tasks); and the zero- and k-shot controls: each specialist's starting model on the
specialist's task with 0 and k examples in the prompt. Written to `<pipeline>/eval_matrix.json`.

What a cell means, by row:
- a causal LM (pretraining, continued pretraining, LoRA): lm-eval on every task.
- a classifier (`objective.classifies`): its own task is its head's test accuracy (metrics.json,
  `eval_accuracy`); the language-modelling tasks (BLiMP, perplexity) score its fine-tuned body read as
  a causal LM through the tied input embeddings (its score head dropped), which is what a decoder's
  classifier fine-tuning did to the language model; another labelled task is n/a (its head answers
  another label set). A classifier without tied embeddings, or saved as an adapter, is n/a there too.
- a masked LM: BLiMP by pseudo-log-likelihood; other tasks n/a.

Memory: one model at a time; lm-eval keeps only per-request log-likelihoods across batches.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptft_hf.errors import Problem, UserError
from ptft_hf.evaluation.checks import CAUSAL, FEWSHOT_EXAMPLES, MASKED, fewshot_room, max_positions_of
from ptft_hf.evaluation.record import resolve_dtype
from ptft_hf.evaluation.task_files import (DATA_TASKS, LABEL_TASKS, NOT_HELD_OUT, TASK_METRICS, default_data_root,
                                           task_family, task_problems)

log = logging.getLogger(__name__)
MATRIX_FILE = "eval_matrix.json"
HEATMAP_FILE = "eval_matrix.png"
RANDOM_INIT = "random-init"


@dataclass
class Node:
    """One row of the matrix: a stage (or the random-initialised model)."""

    name: str
    role: str  # random-init, general, specialist, control
    folder: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # the stage it started from
    own_task: str | None = None

    @property
    def objective(self) -> Any:
        from ptft_hf.objectives import find_objective

        return find_objective(str(self.metrics.get("objective")))


def plan_nodes(run_dir: Path, stage_metrics: dict[str, dict[str, Any]]) -> list[Node]:
    """The random-initialised model, then the stages in pipeline order (general: the first root)."""
    nodes, general = [], None
    for name, m in stage_metrics.items():
        base = (m.get("lineage") or {}).get("init_from_stage")
        role = "control" if m.get("random_init") else "specialist" if base else "general" if general is None else "root"
        general = general or (name if role == "general" else None)
        nodes.append(Node(name, role, run_dir / name, m, base, DATA_TASKS.get(str(m.get("data")))))
    if general is not None:
        g = next(n for n in nodes if n.name == general)
        nodes.insert(0, Node(RANDOM_INIT, RANDOM_INIT, None, {"objective": g.metrics.get("objective")}, None, None))
    return nodes


def general_of(nodes: list[Node]) -> Node | None:
    return next((n for n in nodes if n.role == "general"), None)


def matrix_tasks(nodes: list[Node], general_tasks: list[str]) -> list[str]:
    """The general benchmark, then each stage's own task, in pipeline order, once each."""
    tasks = list(general_tasks)
    for node in nodes:
        if node.own_task and node.own_task not in tasks:
            tasks.append(node.own_task)
    return tasks


def settings_problems(matrix: Any, data_names: list[str] | None = None, field_name: str = "matrix") -> list[Problem]:
    """What a pipeline can check in its `matrix:` block before any stage runs (`data_names`: its
    stages' `data.name`, which give the tree's tasks; None: the limits are checked at scoring time)."""
    if not matrix.enabled:
        return []
    root = Path(matrix.data_root) if matrix.data_root else default_data_root()
    problems = task_problems(list(matrix.tasks), root, f"{field_name}.tasks")
    if matrix.dtype not in ("auto", "float32", "bfloat16"):
        problems.append(Problem(f"{field_name}.dtype", f"'{matrix.dtype}' is not supported", "use auto, float32 or bfloat16"))
    for key in ("limit", "fewshot_limit"):
        for task, value in dict(getattr(matrix, key) or {}).items():
            if value is not None and value < 1:
                problems.append(Problem(f"{field_name}.{key}.{task}", f"{value} documents score nothing", "give 1 or more"))
    if matrix.fewshot is not None and matrix.fewshot < 0:
        problems.append(Problem(f"{field_name}.fewshot", f"{matrix.fewshot} is negative", "give 0 or more, or null"))
    if matrix.batch_size < 1:
        problems.append(Problem(f"{field_name}.batch_size", f"{matrix.batch_size} is not a batch", "give 1 or more"))
    if data_names is not None:
        tasks = list(dict.fromkeys([*matrix.tasks, *(DATA_TASKS[d] for d in data_names if d in DATA_TASKS)]))
        problems += task_problems(tasks[len(matrix.tasks):], root, f"{field_name} (the stages' own tasks)")
        problems += _unknown_limits(matrix, tasks)
    return problems


def _unknown_limits(matrix: Any, tasks: list[str]) -> list[Problem]:
    return [Problem(f"matrix.{key}.{t}", f"'{t}' is not a task of this matrix ({', '.join(tasks)})", "name one of them or drop it")
            for key in ("limit", "fewshot_limit") for t in dict(getattr(matrix, key) or {})
            if t not in tasks and t not in {task_family(name) for name in tasks}]


def _tokenizer_and_positions(node: Node, general: Node | None) -> tuple[Any, int | None]:
    from transformers import AutoTokenizer

    folder = node.folder if node.folder is not None else general.folder  # random-init: the general stage's
    return AutoTokenizer.from_pretrained(str(folder / "model")), max_positions_of(folder / "model")


def control_plan(nodes: list[Node], matrix: Any, root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Each specialist's zero/k-shot control: its base, task and k; and the problems (a k too large for
    the base's context, one line each), found from tokenizers only, before any model is loaded."""
    by_name = {n.name: n for n in nodes}
    controls, problems, room = [], [], {}
    for node in nodes:
        if node.role != "specialist" or not node.own_task or node.base not in by_name:
            continue
        task = node.own_task
        entry: dict[str, Any] = {"specialist": node.name, "task": task, "base": node.base, "k": None}
        if task_family(task) in FEWSHOT_EXAMPLES:
            if (node.base, task) not in room:
                tokenizer, positions = _tokenizer_and_positions(by_name[node.base], None)
                room[(node.base, task)] = (fewshot_room(task, root, tokenizer, positions) if positions else (None, None), positions)
            (per_example, fits), positions = room[(node.base, task)]
            if matrix.fewshot is not None and fits is not None and matrix.fewshot > fits:
                problems.append(Problem("matrix.fewshot", f"{matrix.fewshot} examples of task '{task}' take about "
                                        f"{int(matrix.fewshot * per_example)} tokens (about {per_example:g} each) and "
                                        f"stage '{node.base}' reads {positions}", f"use matrix.fewshot={fits} or less, or null"))
            entry["k"] = matrix.fewshot if matrix.fewshot is not None else fits
            entry["k_rule"] = ("matrix.fewshot" if matrix.fewshot is not None else
                               f"as many as fit: {positions} positions / about {per_example:g} tokens per example "
                               "(90th percentile), one example's room left for the query")
        else:
            entry["k_rule"] = ("k=0 only: the task scores whole documents by rolling log-likelihood, with no prompt "
                               "to hold examples")
        controls.append(entry)
    return controls, problems


def _load(node: Node, general: Node, seed: int) -> tuple[Any, Any, str]:
    """(model, tokenizer, how it was read) for a row; random-init: the general stage's architecture
    and tokenizer with fresh weights (seeded)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    if node.role == RANDOM_INIT:
        auto = general.objective.auto_class
        config = AutoConfig.from_pretrained(str(general.folder / "model"))
        torch.manual_seed(seed)
        model = getattr(transformers, auto).from_config(config)
        return model.eval(), AutoTokenizer.from_pretrained(str(general.folder / "model")), \
            f"{config.model_type} from the general stage's config, random weights (seed {seed})"
    if node.objective is not None and node.objective.classifies:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(node.folder / "model"))
        return model.eval(), AutoTokenizer.from_pretrained(str(node.folder / "model")), \
            "the classifier's fine-tuned body read as a causal LM (tied embeddings as its LM head; score head dropped)"
    from ptft_hf.api import open_run

    model, tokenizer = open_run(node.folder).load()
    return model, tokenizer, "its saved model"


def _body_readable(node: Node) -> str | None:
    """Why a classifier's body cannot be read as a language model, or None when it can."""
    model_dir = node.folder / "model"
    if (model_dir / "adapter_config.json").is_file():
        return "n/a: classifier saved as an adapter"
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if not config.get("tie_word_embeddings", True):
        return "n/a: classifier head, no tied LM head"
    return None


def _why_not(node: Node, task: str, general: Node) -> str | None:
    """Why a cell is not scored (or how it is), None when lm-eval scores it."""
    objective = general.objective if node.role == RANDOM_INIT else node.objective
    auto = getattr(objective, "auto_class", CAUSAL)
    if node.role != RANDOM_INIT and objective is not None and objective.classifies:
        if task == node.own_task:
            return "head"
        if task_family(task) in LABEL_TASKS:
            return "n/a: classifier of another label set"
        return _body_readable(node)
    if auto == MASKED:
        return None if task_family(task) == "blimp" else "n/a: masked LM"
    if auto != CAUSAL:
        return f"n/a: {auto}"
    return None


def _lm_eval_cell(model: Any, tokenizer: Any, task: str, k: int, limit: int | None, batch_size: int, root: Path) -> dict[str, Any]:
    from ptft_hf.evaluation.runner import evaluate_model

    out = evaluate_model(model, tokenizer, [task], k, limit, batch_size, root)
    metric, _ = TASK_METRICS[task_family(task)]
    values = out["results"][task]
    return {"value": values[metric], "stderr": values.get(f"{metric}_stderr"), "metric": metric, "limit": limit,
            "num_fewshot": k, "scorer": "lm-evaluation-harness", "seconds": out["seconds"], "task_files_sha256": out["task_files"]}


def _zero_shot_cell(model: Any, tokenizer: Any, task: str, limit: int | None, batch_size: int, root: Path) -> dict[str, Any]:
    return _lm_eval_cell(model, tokenizer, task, 0, limit, batch_size, root)


def _masked_cell(model: Any, tokenizer: Any, task: str, limit: int | None, batch_size: int, root: Path) -> dict[str, Any]:
    import math

    from ptft_hf.evaluation.blimp import score_masked

    started = time.time()
    per_task = score_masked(model, tokenizer, [task], root, limit, batch_size)
    accs = [v["acc"] for v in per_task.values()]
    errs = [v["acc_stderr"] for v in per_task.values()]
    return {"value": sum(accs) / len(accs), "stderr": math.sqrt(sum(e * e for e in errs)) / len(errs), "metric": "acc",
            "limit": limit, "num_fewshot": 0, "scorer": "pseudo-log-likelihood", "seconds": round(time.time() - started, 2)}


def _head_cell(node: Node) -> dict[str, Any]:
    import math

    m = node.metrics
    acc = m.get("eval_accuracy")
    n = (m.get("data_eval") or {}).get("documents") or m.get("eval_samples")
    stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if acc is not None and isinstance(n, int) and n > 1 else None
    return {"value": acc, "stderr": stderr, "metric": "acc", "limit": None, "num_fewshot": None,
            "scorer": "its classification head: test accuracy from metrics.json (eval_accuracy)"}


def build_matrix(run_dir: str | Path, stage_metrics: dict[str, dict[str, Any]], matrix: Any, seed: int = 42) -> dict[str, Any]:
    """Score every node on every task of the tree, the zero/k-shot controls and the anchors; write
    `run_dir/eval_matrix.json` (and the heatmap) and return its content. Every problem (unknown task,
    k too large for a base's context, ...) is raised, one line each, before any model is loaded."""
    import torch

    run_dir = Path(run_dir)
    root = Path(matrix.data_root) if matrix.data_root else default_data_root()
    nodes = plan_nodes(run_dir, stage_metrics)
    general = general_of(nodes)
    problems = settings_problems(matrix)
    if general is None:
        problems.append(Problem("matrix", "the pipeline has no stage trained from its own config (a root)", "add one"))
    if problems:
        raise UserError(problems)
    tasks = matrix_tasks(nodes, list(matrix.tasks))
    problems = task_problems(tasks, root, "matrix (the stages' own tasks)")
    given = dict(matrix.limit or {})
    limits = {t: given.get(t, given.get(task_family(t))) for t in tasks}  # `blimp` also limits a blimp_<paradigm> task
    fewshot_limits = {t: dict(matrix.fewshot_limit or {}).get(t, limits.get(t)) for t in tasks if task_family(t) in FEWSHOT_EXAMPLES}
    problems += _unknown_limits(matrix, tasks)
    controls, fewshot = control_plan(nodes, matrix, root)
    problems += fewshot
    if problems:
        raise UserError(problems)
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = resolve_dtype(matrix.dtype, device)
    dtype = getattr(torch, dtype_name)
    rows: dict[str, dict[str, Any]] = {}
    wanted_kshot = {(c["base"], c["task"], c["k"]) for c in controls if c["k"]}
    kshot: dict[tuple[str, str, int], dict[str, Any]] = {}
    for node in nodes:
        cells: dict[str, Any] = {}
        reasons = {t: _why_not(node, t, general) for t in tasks}
        for task, why in reasons.items():
            if why == "head":
                cells[task] = _head_cell(node)
            elif why is not None:
                cells[task] = {"na": why}
        to_score = [t for t, why in reasons.items() if why is None]
        needs_kshot = [key for key in wanted_kshot if key[0] == node.name]
        read_as = None
        row_started = time.time()
        if to_score or needs_kshot:
            model, tokenizer, read_as = _load(node, general, seed)
            model = model.to(device=device, dtype=dtype).eval()
            masked = (general if node.role == RANDOM_INIT else node).objective.auto_class == MASKED
            for task in to_score:
                full = node.role == "general" and task in matrix.tasks  # the general model's benchmark: always in full
                limit = None if full else limits[task]
                log.info("matrix: %s on %s%s", node.name, task, f" (limit {limit})" if limit else "")
                score = _masked_cell if masked else _zero_shot_cell
                cells[task] = score(model, tokenizer, task, limit, matrix.batch_size, root)
                if full and limits[task]:  # like for like with the other rows (forgetting, random-init)
                    cells[task]["same_limit"] = {k: v for k, v in score(model, tokenizer, task, limits[task], matrix.batch_size,
                                                                         root).items() if k != "task_files_sha256"}
            for key in needs_kshot:
                _, task, k = key
                log.info("matrix: %s on %s, %d-shot (limit %s)", node.name, task, k, fewshot_limits[task])
                kshot[key] = _lm_eval_cell(model, tokenizer, task, k, fewshot_limits[task], matrix.batch_size, root)
            del model
        rows[node.name] = {"role": node.role, "base": node.base, "data": node.metrics.get("data"),
                           "objective": node.metrics.get("objective"), "own_task": node.own_task,
                           "replay": _replay(node.metrics), "read_as": read_as, "cells": cells,
                           "seconds": round(time.time() - row_started, 1)}
    for c in controls:
        base_cell = rows[c["base"]]["cells"].get(c["task"], {})
        c["zero_shot"] = base_cell
        c["k_shot"] = kshot.get((c["base"], c["task"], c["k"])) if c["k"] else None
        c["specialist_score"] = rows[c["specialist"]]["cells"].get(c["task"], {})
        c["margin"] = margin(c)
    from ptft_hf.evaluation.tasks.documents import DOCUMENT_ORDER_SEED  # imports datasets: only once scoring is done

    record = {"tasks": tasks, "general_tasks": list(matrix.tasks), "metrics": {t: _metric_info(t) for t in tasks},
              "limit": limits, "fewshot_limit": fewshot_limits, "document_order_seed": DOCUMENT_ORDER_SEED,
              "batch_size": matrix.batch_size, "dtype": dtype_name,
              "device": device, "data_root": str(root.resolve()), "general": general.name, "rows": rows,
              "controls": controls, "anchors": anchor_rows(tasks, root),
              "not_held_out": sorted({n.name for n in nodes if str(n.metrics.get("data")) in NOT_HELD_OUT}),
              "versions": _versions(), "seconds": round(time.time() - started, 1)}
    (run_dir / MATRIX_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    write_heatmap(record, run_dir / HEATMAP_FILE)
    log.info("%s written (%.0f s)", run_dir / MATRIX_FILE, record["seconds"])
    return record


def _replay(metrics: dict[str, Any]) -> float:
    from ptft_hf.data.mixture import replay_share

    return replay_share(metrics.get("data_mixture"))


def _metric_info(task: str) -> dict[str, Any]:
    metric, higher = TASK_METRICS[task_family(task)]
    return {"metric": metric, "higher_is_better": higher}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lm_eval", "transformers", "torch", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def margin(control: dict[str, Any]) -> dict[str, Any] | None:
    """The specialist's score against its best control (0-shot or k-shot): the difference (accuracy, or
    bits per byte, where lower is better); None where a score is missing."""
    own = control["specialist_score"].get("value")
    candidates = [(label, cell["value"]) for label, cell in (("0-shot", control["zero_shot"]), (f"{control['k']}-shot", control.get("k_shot") or {}))
                  if isinstance(cell, dict) and cell.get("value") is not None]
    if own is None or not candidates:
        return None
    _, higher = TASK_METRICS[task_family(control["task"])]
    best_label, best = (max if higher else min)(candidates, key=lambda c: c[1])
    return {"best_control": best_label, "best_value": best, "difference": own - best, "higher_is_better": higher}


def anchor_rows(tasks: list[str], root: Path) -> dict[str, dict[str, Any]]:
    """Rows that need no model: the BLiMP paper's (5-gram, LSTM, Transformer-XL, GPT-2 1.5B) and the
    classical classifiers on the labelled tasks."""
    from ptft_hf.evaluation.anchors import ANCHOR_NAMES, classification_anchors
    from ptft_hf.evaluation.blimp import anchors as blimp_anchors

    rows: dict[str, dict[str, Any]] = {}
    names = {"ngram": "5-gram", "lstm": "LSTM", "txl": "Transformer-XL", "gpt2": "GPT-2 (1.5B)"}
    summary = root / "eval/blimp/models_summary.jsonl"
    for task in (t for t in tasks if task_family(t) == "blimp" and summary.is_file()):
        if task == "blimp":  # the paper's overall row
            values = blimp_anchors(root)
        else:  # one paradigm: its own row
            found = [json.loads(line) for line in summary.read_text(encoding="utf-8").splitlines() if line.strip()]
            values = next(({k: r[k] for k in names} for r in found if r.get("UID") == task[len("blimp_"):]), {})
        for key, value in values.items():
            rows.setdefault(f"BLiMP paper: {names[key]}", {})[task] = {"value": value, "metric": "acc",
                                                                     "scorer": "Warstadt et al. (2020)"}
    for task in tasks:
        if task_family(task) in LABEL_TASKS:
            for key, cell in classification_anchors(task, root).items():
                rows.setdefault(ANCHOR_NAMES[key], {})[task] = cell
    return rows


def heatmap_figure(record: dict[str, Any]) -> Any:
    """The matrix as a heatmap: each column coloured from its worst to its best row (bits per byte
    inverted), the values written in the cells; rows are the nodes, then the anchors."""
    import math

    from matplotlib.figure import Figure

    tasks = record["tasks"]
    rows = [(name, row["cells"]) for name, row in record["rows"].items()] + list(record["anchors"].items())
    values = [[(cells.get(t) or {}).get("value") for t in tasks] for _, cells in rows]
    shade = [[math.nan] * len(tasks) for _ in rows]
    for j, task in enumerate(tasks):
        column = [v[j] for v in values if v[j] is not None]
        if not column:
            continue
        higher = record["metrics"][task]["higher_is_better"]
        lo, hi = (min(column), max(column)) if higher else (max(column), min(column))
        for i, v in enumerate(values):
            if v[j] is not None:
                shade[i][j] = 0.5 if hi == lo else (v[j] - lo) / (hi - lo)
    fig = Figure(figsize=(1.6 + 1.5 * len(tasks), 0.9 + 0.38 * len(rows)))
    ax = fig.subplots()
    ax.imshow(shade, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, (row, (_, cells)) in enumerate(zip(values, rows)):
        for j, v in enumerate(row):
            text = "" if tasks[j] not in cells else "n/a" if v is None else f"{v:.3f}"  # anchors: blank where they have none
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(tasks)), [f"{t}\n{record['metrics'][t]['metric']}" for t in tasks], fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_title("evaluation matrix\n(each column: red worst, green best)", fontsize=9)
    fig.tight_layout()
    return fig


def write_heatmap(record: dict[str, Any], path: Path) -> Path | None:
    """The matrix's heatmap (`heatmap_figure`) as a PNG."""
    heatmap_figure(record).savefig(path, dpi=110)
    return path
