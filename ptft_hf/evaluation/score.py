"""score_run: evaluate a finished run folder (or every stage of a pipeline folder) and write
`eval.json` beside each model, recording how the numbers were made."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptft_hf.errors import Problem, UserError
from ptft_hf.evaluation.checks import MASKED, fewshot_problems, max_positions_of, scoring_problems
from ptft_hf.evaluation.task_files import default_data_root, task_family, task_problems

log = logging.getLogger(__name__)
EVAL_FILE = "eval.json"


@dataclass
class EvalRequest:
    """What to score and how (the `eval:` config block and the CLI's arguments)."""

    tasks: list[str]
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 64
    data_root: str | None = None
    dtype: str = "float32"  # float32 or bfloat16 (faster on CPUs with AVX-512 BF16 and on GPUs)
    device: str | None = None  # null: cuda when available, else cpu
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.data_root) if self.data_root else default_data_root()


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
    if request.dtype not in ("float32", "bfloat16"):
        problems.append(Problem("dtype", f"'{request.dtype}' is not supported", "use dtype=float32 or dtype=bfloat16"))
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

        result = open_run(folder)
        model, tokenizer = result.load()
        written[folder / EVAL_FILE] = score_model(model, tokenizer, request, folder,
                                                  masked=_auto_class(result.metrics) == MASKED)
    return written


def _auto_class(metrics: dict[str, Any]) -> str:
    from ptft_hf.objectives import get_objective

    return get_objective(metrics["objective"]).auto_class


def score_model(model: Any, tokenizer: Any, request: EvalRequest, folder: Path, masked: bool) -> dict[str, Any]:
    """Evaluate a loaded model, write `folder/eval.json`, return its content."""
    import torch

    from ptft_hf.evaluation.blimp import score_masked, summarise

    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device=device, dtype=getattr(torch, request.dtype)).eval()
    started = time.time()
    if masked:
        results = score_masked(model, tokenizer, request.tasks, request.root, request.limit, request.batch_size)
        engine = {"scorer": "pseudo-log-likelihood (ptft_hf.evaluation.pll, Salazar et al., 2020)"}
        task_files: dict[str, str] = {}
    else:
        from ptft_hf.evaluation.runner import evaluate_model

        out = evaluate_model(model, tokenizer, request.tasks, request.num_fewshot, request.limit, request.batch_size,
                             request.root)
        results, task_files = out["results"], out["task_files"]
        engine = {"scorer": "lm-evaluation-harness"}
    record = eval_record(results, request, task_files, engine, device, time.time() - started)
    (folder / EVAL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("%s written (%.1f s)%s", folder / EVAL_FILE, record["seconds"],
             f"; BLiMP {record['blimp']['average']:.4f}" if record.get("blimp") else "")
    return record


def eval_record(results: dict[str, dict[str, float]], request: EvalRequest, task_files: dict[str, str],
                engine: dict[str, str], device: str, seconds: float) -> dict[str, Any]:
    """eval.json: the numbers and how they were made (versions, task file hashes, limit, shots, dtype)."""
    import transformers

    from ptft_hf.evaluation.blimp import summarise

    try:
        from importlib.metadata import version

        lm_eval_version = version("lm_eval")
    except Exception:  # the extra is not installed (a masked LM scored without it)
        lm_eval_version = None
    record: dict[str, Any] = {
        "tasks": request.tasks, "num_fewshot": request.num_fewshot, "limit": request.limit,
        "batch_size": request.batch_size, "dtype": request.dtype, "device": device,
        "data_root": str(request.root.resolve()), "versions": {"lm_eval": lm_eval_version, "transformers": transformers.__version__},
        "task_files_sha256": task_files, **engine, "results": results, "seconds": round(seconds, 2)}
    if any(task_family(t) == "blimp" for t in request.tasks):
        record["blimp"] = summarise(results, request.root)
    return record
