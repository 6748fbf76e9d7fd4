"""evaluate_model: lm-evaluation-harness over a model held in memory (no re-implementation of its
loglikelihood or few-shot machinery); the masked-LM path scores BLiMP by pseudo-log-likelihood."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ptft_hf.data.local_files import no_download_count_request
from ptft_hf.errors import UserError
from ptft_hf.evaluation.parallel import (BLIMP_GROUP, blimp_group_metrics, paradigm_tasks, paradigm_weights, process_count,
                                        score_shares)
from ptft_hf.evaluation.shared_prefixes import prefix_sharing_agrees, shared_prefix_logits
from ptft_hf.evaluation.short_sentences import use_short_sentence_kernels
from ptft_hf.evaluation.task_files import default_data_root, render_tasks, task_problems

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install ptft-hf[eval]"
BOOTSTRAP_ITERS = 1000  # standard errors of the perplexities (accuracies have a closed form)


def require_lm_eval() -> Any:
    """lm-eval, or one line naming the extra that installs it."""
    try:
        import lm_eval
    except ImportError as err:
        raise UserError.of("eval", f"lm-evaluation-harness is not installed ({err})", f"run `{EXTRA_HINT}`") from err
    return lm_eval


def evaluate_model(model: Any, tokenizer: Any, tasks: list[str], num_fewshot: int | None = None,
                   limit: int | float | None = None, batch_size: int = 64, data_root: str | Path | None = None,
                   seed: int = 1234, processes: int | None = None) -> dict[str, Any]:
    """Score a causal LM in memory on the shipped `tasks` with lm-eval's `simple_evaluate`.

    Returns `{"results": {task: {metric: value, metric + "_stderr": value}}, "n_samples": ...,
    "task_files": {file: sha256}, "seconds": ...}`. A PEFT model is scored with its adapters
    active on the base (nothing is merged in place). BLiMP's paradigms are shared among `processes`
    forked processes on a CPU (None: one per available core; see `parallel.py`), with the same scores."""
    require_lm_eval()
    root = Path(data_root) if data_root is not None else default_data_root()
    problems = task_problems(tasks, root)
    if problems:
        raise UserError(problems)
    if hasattr(model, "get_base_model"):  # peft: the base model with the adapter layers injected
        model = model.get_base_model()
    paradigms = paradigm_tasks(tasks, root)
    count = process_count(processes, len(paradigms), on_cuda=next(model.parameters()).is_cuda)
    if count == 1:
        return _evaluate_once(model, tokenizer, tasks, num_fewshot, limit, batch_size, root, seed)
    started = time.time()
    def score_share(share: list[str]) -> dict[str, Any]:  # in a forked process of its own: the model may change
        switched = use_short_sentence_kernels(model)
        shared = prefix_sharing_agrees(model, model.get_input_embeddings().num_embeddings)
        log.info("BLiMP share of %d paradigms: %s", len(share), ", ".join(switched + ["shared prefixes" if shared else "no shared prefixes"]))
        return _evaluate_once(model, tokenizer, share, num_fewshot, limit, batch_size, root, seed, share_prefixes=shared)

    shares = score_shares(score_share, paradigms, count, paradigm_weights(paradigms, root, limit))
    others = [t for t in tasks if t != BLIMP_GROUP and t not in paradigms]
    if others:
        shares.append(_evaluate_once(model, tokenizer, others, num_fewshot, limit, batch_size, root, seed))
    results = {name: values for share in shares for name, values in share["results"].items()}
    n_samples = {name: n for share in shares for name, n in share["n_samples"].items()}
    if BLIMP_GROUP in tasks:
        results[BLIMP_GROUP] = blimp_group_metrics(results, paradigms, n_samples)
    with tempfile.TemporaryDirectory(prefix="ptft_hf_tasks_") as folder:  # the hashes one process would record
        task_files = render_tasks(tasks, root, Path(folder)).file_sha256
    return {"results": results, "n_samples": n_samples, "task_files": task_files, "seconds": round(time.time() - started, 2)}


def _evaluate_once(model: Any, tokenizer: Any, tasks: list[str], num_fewshot: int | None, limit: int | float | None,
                   batch_size: int, root: Path, seed: int, share_prefixes: bool = False) -> dict[str, Any]:
    """One `simple_evaluate` over `tasks` in this process (with `share_prefixes`, the model call
    computes each batch's shared prefixes once: `shared_prefixes.py`)."""
    lm_eval = require_lm_eval()
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ptft_hf_tasks_") as folder, no_download_count_request():  # every task reads local files
        rendered = render_tasks(tasks, root, Path(folder))
        manager = TaskManager(include_path=folder, include_defaults=False)
        # log-softmax in float32 whatever the weights: bfloat16 log-probs tie often enough on close
        # minimal pairs to bias multiple choice (a tie picks the first choice, BLiMP's acceptable one)
        lm_class = _prefix_sharing_lm(HFLM) if share_prefixes else HFLM
        lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=batch_size,
                      softmax_dtype=torch.float32)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed)
    results = {name: _metrics(values) for name, values in out["results"].items()}
    if "blimp" in out.get("groups", {}):
        results["blimp"] = _metrics(out["groups"]["blimp"])
    return {"results": results, "n_samples": {k: v.get("effective", v) for k, v in out.get("n-samples", {}).items()},
            "task_files": rendered.file_sha256, "seconds": round(time.time() - started, 2)}


def _prefix_sharing_lm(hflm: type) -> type:
    """lm-eval's HFLM whose model call computes each batch's shared prefixes once (the rest of
    lm-eval's loglikelihood loop, its log-softmax and scoring, are its own)."""
    import torch

    class PrefixSharingHFLM(hflm):
        def _model_call(self, inps, attn_mask=None, labels=None):
            if attn_mask is None and labels is None and self.mixed_precision_dtype is None:
                with torch.no_grad():
                    logits = shared_prefix_logits(self.model, inps)
                if logits is not None:
                    return logits
            return super()._model_call(inps, attn_mask, labels)

    return PrefixSharingHFLM


def _metrics(values: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's `acc,none` / `acc_stderr,none` keys as `acc` / `acc_stderr` (no filters here)."""
    out = {}
    for key, value in values.items():
        if "," in key and isinstance(value, (int, float)):
            out[key.split(",")[0]] = float(value)
    return out
