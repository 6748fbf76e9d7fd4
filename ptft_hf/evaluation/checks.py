"""What is wrong with an evaluation request, found before any model is loaded (one line each)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ptft_hf.errors import Problem
from ptft_hf.evaluation.task_files import task_family, task_problems

MASKED = "AutoModelForMaskedLM"
CAUSAL = "AutoModelForCausalLM"
# multiple-choice tasks: their few-shot split and the columns of one worked example
FEWSHOT_EXAMPLES = {"banking77": ("banking77/train.csv", "Query: {text}\nIntent: {category}"),
                    "chemprot": ("medical/chemprot/train.csv", "Sentence: {text}\nRelation: {label}")}


def scoring_problems(auto_class: str, tasks: list[str], field: str = "tasks") -> list[Problem]:
    """A masked LM scores BLiMP only (pseudo-log-likelihood); a classifier has no LM head at all."""
    if auto_class == MASKED:
        return [Problem(field, f"task '{t}' scores left-to-right log-likelihoods, which a masked LM does not define",
                        "score a masked LM on tasks=blimp (pseudo-log-likelihood, Salazar et al., 2020)")
                for t in tasks if task_family(t) != "blimp"]
    if auto_class != CAUSAL:
        return [Problem(field, f"the model is loaded as {auto_class}, which has no language-modelling head to score",
                        "evaluate the causal or masked LM it was fine-tuned from")]
    return []


def fewshot_problems(tasks: list[str], num_fewshot: int | None, data_root: Path, tokenizer: Any,
                     max_positions: int | None, field: str = "num_fewshot") -> list[Problem]:
    """`num_fewshot` on a zero-shot task, or more examples than the model's context holds (see
    `fewshot_room`: the 90th-percentile example length of the task's few-shot split)."""
    if not num_fewshot:
        return []
    if num_fewshot < 0:
        return [Problem(field, f"{num_fewshot} is negative", "give 0 or more")]
    problems = []
    for name in tasks:
        family = task_family(name)
        if family not in FEWSHOT_EXAMPLES:
            problems.append(Problem(field, f"task '{name}' is zero-shot (minimal pairs or perplexity)",
                                    f"leave num_fewshot unset for {name}, or score it separately"))
            continue
        if max_positions is None:
            continue
        per_example, fits = fewshot_room(name, data_root, tokenizer, max_positions)
        if num_fewshot > fits:
            problems.append(Problem(field, f"{num_fewshot} examples of task '{name}' take about {int(num_fewshot * per_example)} "
                                    f"tokens (about {per_example:g} each, 90th percentile) and the model reads {max_positions}",
                                    f"use num_fewshot={max(fits, 0)} or less"))
    return problems


def fewshot_room(task: str, data_root: Path, tokenizer: Any, max_positions: int) -> tuple[float, int]:
    """(tokens one worked example takes, the largest k whose k-shot prompt fits `max_positions`).
    One example: the 90th percentile of 200 training examples (spread over the file) in the task's template, plus
    the delimiter; the scored query and its answer take about one more example."""
    rel, template = FEWSHOT_EXAMPLES[task_family(task)]
    with (data_root / rel).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:: max(1, len(rows) // 200)]  # 200 spread over the file (BANKING77's train.csv is sorted by intent)
    lengths = sorted(len(tokenizer(template.format(**row))["input_ids"]) + 2 for row in rows)
    per_example = float(lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))])
    return per_example, max(int((max_positions - per_example) // per_example), 0)



def max_positions_of(model_dir: Path) -> int | None:
    """The model's longest input, from its config.json (or the adapter's base config)."""
    config = model_dir / "config.json"
    if not config.is_file():
        adapter = model_dir / "adapter_config.json"
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
        config = Path(base) / "config.json" if base else config
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    return next((values[k] for k in ("n_positions", "max_position_embeddings") if k in values), None)


__all__ = ["scoring_problems", "fewshot_problems", "fewshot_room", "max_positions_of", "task_problems", "MASKED", "CAUSAL"]
