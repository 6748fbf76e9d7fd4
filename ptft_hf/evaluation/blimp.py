"""BLiMP summaries: the average over paradigms and per linguistic field, beside the published
anchors of `models_summary.jsonl`; and BLiMP for masked LMs by pseudo-log-likelihood."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ptft_hf.evaluation.task_files import BLIMP_PREFIX, blimp_paradigms

ANCHORS = ("ngram", "lstm", "txl", "gpt2")


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def paradigm_fields(data_root: Path) -> dict[str, str]:
    """Paradigm UID -> its field (syntax, morphology, semantics, syntax_semantics, ...)."""
    return {uid: _read_jsonl(data_root / "eval/blimp/data" / f"{uid}.jsonl", 1)[0]["field"]
            for uid in blimp_paradigms(data_root)}


def anchors(data_root: Path) -> dict[str, float]:
    """The published models' overall accuracy, the file's `overall` row (5-gram 0.612, LSTM 0.698,
    Transformer-XL 0.696, GPT-2 0.830)."""
    rows = _read_jsonl(data_root / "eval/blimp/models_summary.jsonl")
    overall = next(r for r in rows if r["UID"] == r.get("linguistics_term") == "overall")
    return {name: round(overall[name], 4) for name in ANCHORS}


def summarise(per_task: dict[str, dict[str, float]], data_root: Path) -> dict[str, Any]:
    """Average accuracy over the scored paradigms and per field, and the anchors."""
    fields = paradigm_fields(data_root)
    accs = {name[len(BLIMP_PREFIX):]: v["acc"] for name, v in per_task.items() if name.startswith(BLIMP_PREFIX)}
    by_field: dict[str, list[float]] = {}
    for uid, acc in accs.items():
        by_field.setdefault(fields[uid], []).append(acc)
    return {"average": sum(accs.values()) / len(accs) if accs else None, "paradigms": len(accs),
            "per_field": {f: sum(v) / len(v) for f, v in sorted(by_field.items())},
            "anchors": anchors(data_root) if (data_root / "eval/blimp/models_summary.jsonl").is_file() else {}}


def score_masked(model: Any, tokenizer: Any, tasks: list[str], data_root: Path, limit: int | None,
                 batch_size: int) -> dict[str, dict[str, float]]:
    """Per-paradigm accuracy of a masked LM: the acceptable sentence has the higher PLL."""
    from ptft_hf.evaluation.pll import pseudo_log_likelihoods

    uids = blimp_paradigms(data_root) if "blimp" in tasks else [t[len(BLIMP_PREFIX):] for t in tasks]
    results = {}
    for uid in uids:
        rows = _read_jsonl(data_root / "eval/blimp/data" / f"{uid}.jsonl", limit)
        scores = pseudo_log_likelihoods(model, tokenizer, [r[k] for r in rows for k in ("sentence_good", "sentence_bad")],
                                        batch_size)
        correct = [1.0 if scores[2 * i] > scores[2 * i + 1] else 0.0 for i in range(len(rows))]
        results[BLIMP_PREFIX + uid] = {"acc": sum(correct) / len(correct), "acc_stderr": mean_stderr(correct)}
    return results


def mean_stderr(values: list[float]) -> float:
    """Standard error of a mean, as lm-eval's `mean_stderr` (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)
