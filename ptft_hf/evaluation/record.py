"""score_model: evaluate a loaded model and write `eval.json`, recording how the numbers were made
(lm-eval and transformers versions, task file hashes, limit, num_fewshot, dtype, standard errors).
The recipe calls it after training; `score.py` calls it for finished folders."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptft_hf.evaluation.task_files import default_data_root, task_family

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
    # auto: bfloat16 where the device runs it fast (GPUs that have it, CPUs with AVX-512 BF16 or AMX), else
    # float32; or float32, bfloat16. The eval: block passes its own (float32 unless set)
    dtype: str = "auto"
    device: str | None = None  # null: cuda when available, else cpu
    processes: int | None = None  # BLiMP's paradigms shared among N forked processes on a CPU; null: one per core
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.data_root) if self.data_root else default_data_root()


def resolve_dtype(setting: str, device: str) -> str:
    """`auto`: bfloat16 on a GPU that has it and on CPUs with AVX-512 BF16 or AMX (measured 1.3-1.9x
    faster than float32 for BLiMP on a 4x256 GPT-2), else float32 (AVX2-only CPUs run bfloat16 matmuls
    about 100x slower). Log-softmax stays in float32 either way (`runner.evaluate_model`)."""
    if setting != "auto":
        return setting
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def score_model(model: Any, tokenizer: Any, request: EvalRequest, folder: Path, masked: bool) -> dict[str, Any]:
    """Evaluate a loaded model, write `folder/eval.json`, return its content."""
    import torch

    from ptft_hf.evaluation.blimp import score_masked

    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    request.dtype = resolve_dtype(request.dtype, device)  # eval.json records what ran
    model = model.to(device=device, dtype=getattr(torch, request.dtype)).eval()
    started = time.time()
    if masked:
        results = score_masked(model, tokenizer, request.tasks, request.root, request.limit, request.batch_size)
        engine = {"scorer": "pseudo-log-likelihood (ptft_hf.evaluation.pll, Salazar et al., 2020)"}
        task_files: dict[str, str] = {}
    else:
        from ptft_hf.evaluation.runner import evaluate_model

        out = evaluate_model(model, tokenizer, request.tasks, request.num_fewshot, request.limit, request.batch_size,
                             request.root, processes=request.processes)
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
