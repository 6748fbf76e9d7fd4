"""score_run: evaluate a finished run folder (or every stage of a pipeline folder) and write
`eval.json` beside each model (see `record.score_model`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ptft_hf.errors import Problem, UserError
from ptft_hf.evaluation.checks import MASKED, fewshot_problems, max_positions_of, scoring_problems
from ptft_hf.evaluation.record import EVAL_FILE, EvalRequest, score_model
from ptft_hf.evaluation.task_files import task_problems

log = logging.getLogger(__name__)

__all__ = ["EVAL_FILE", "EvalRequest", "score_run"]


def run_folders(path: Path) -> list[Path]:
    """The folders holding a finished model: the run itself, or every stage of a pipeline."""
    from ptft_hf.api import open_run

    try:
        result = open_run(path)
    except FileNotFoundError as err:
        raise UserError.of("path", str(err), "give a finished run or pipeline folder (train it first)") from err
    folders = [s.run_dir for s in result.stages.values()] if result.stages else [result.run_dir]
    missing = [f for f in folders if not (f / "model").is_dir()]
    if missing:
        raise UserError([Problem("path", f"{f} has no model/ folder", "give a run folder whose training finished and saved")
                         for f in missing])
    return folders


def request_problems(request: EvalRequest, folders: list[Path]) -> list[Problem]:
    """Every problem with the request against these folders, before any model is loaded."""
    from transformers import AutoTokenizer

    from ptft_hf.objectives import get_objective

    problems = task_problems(request.tasks, request.root)
    if request.dtype not in ("auto", "float32", "bfloat16"):
        problems.append(Problem("dtype", f"'{request.dtype}' is not supported", "use dtype=auto, float32 or bfloat16"))
    if request.processes is not None and request.processes < 1:
        problems.append(Problem("processes", f"{request.processes} processes score nothing",
                                "give 1 or more, or leave it out (one per CPU core)"))
    if problems:
        return problems
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        where = f" ({folder.name})" if len(folders) > 1 else ""
        for p in scoring_problems(get_objective(metrics["objective"]).auto_class, request.tasks):
            problems.append(Problem(p.field + where, p.what, p.fix))
        if request.num_fewshot:
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "model"))
            problems += fewshot_problems(request.tasks, request.num_fewshot, request.root, tokenizer,
                                         max_positions_of(folder / "model"))
    return problems


def has_lm_head(folder: Path) -> bool:
    """Causal and masked LMs can be scored; classifiers cannot (a pipeline's are skipped)."""
    from ptft_hf.evaluation.checks import CAUSAL

    return _auto_class(json.loads((folder / "metrics.json").read_text(encoding="utf-8"))) in (CAUSAL, MASKED)


def score_run(path: str | Path, request: EvalRequest) -> dict[Path, dict[str, Any]]:
    """Score every model under `path` (a pipeline: its stages with an LM head); returns
    {eval.json path: its content}."""
    folders = run_folders(Path(path))
    if len(folders) > 1 or folders[0] != Path(path):
        skipped = [f.name for f in folders if not has_lm_head(f)]
        if skipped:
            log.info("stages without a language-modelling head, not scored: %s", ", ".join(skipped))
        folders = [f for f in folders if has_lm_head(f)] or folders
    problems = request_problems(request, folders)
    if problems:
        raise UserError(problems)
    written = {}
    for folder in folders:
        from ptft_hf.api import open_run

        result = open_run(folder, device="cpu", dtype="float32")  # as saved: score_model moves and casts it (request.dtype)
        model, tokenizer = result.load()
        written[folder / EVAL_FILE] = score_model(model, tokenizer, request, folder,
                                                  masked=_auto_class(result.metrics) == MASKED)
    return written


def _auto_class(metrics: dict[str, Any]) -> str:
    from ptft_hf.objectives import get_objective

    return get_objective(metrics["objective"]).auto_class


