"""What a tracker receives from a finished run folder, read from the folder alone: the config (as
resolved, secrets already masked), the lineage and config hashes, the step-by-step log, and the
final figures of `metrics.json` (every number, under `final/`). Nothing here imports a tracker."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptft_hf.config.redact import redact, secret_values
from ptft_hf.run_dir import FINISHED_MARKER
from ptft_hf.training.report import read_log

FINAL = "final/"  # metrics.json's figures, apart from the step-by-step log's names (its eval_loss is validation's)


@dataclass
class RunRecord:
    """One run as the trackers log it."""

    config: dict[str, Any]  # the resolved config, lineage, fingerprint, seed and, in a pipeline, the seed's table row
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, figures) from train_log.jsonl
    final: dict[str, float] = field(default_factory=dict)  # "final/<metrics.json key path>": value
    last_step: int = 0


def flat_numbers(values: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested record, keyed by its path joined with '/' (list items by index);
    booleans and text are left out (they are in the config)."""
    if isinstance(values, dict):
        return {k: v for key, item in values.items() for k, v in flat_numbers(item, f"{prefix}{key}/").items()}
    if isinstance(values, (list, tuple)):
        return {k: v for i, item in enumerate(values) for k, v in flat_numbers(item, f"{prefix}{i}/").items()}
    if isinstance(values, (int, float)) and not isinstance(values, bool) and math.isfinite(values):
        return {prefix.rstrip("/"): values}
    return {}


def _history(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """train_log.jsonl's records: an evaluation's figures under its split (`test/eval_loss`,
    `validation/eval_loss`), training's under their own names."""
    rows = []
    for record in read_log(run_dir / "train_log.jsonl"):
        split = record.get("split")
        figures = {(f"{split}/{k}" if split else k): v for k, v in flat_numbers(
            {k: v for k, v in record.items() if k not in ("step", "time_s")}).items()}
        if figures:
            rows.append((int(record.get("step", 0)), figures))
    return rows


def run_record(run_dir: Path, extra_config: dict[str, Any] | None = None) -> RunRecord:
    """The record of the finished run in `run_dir` (its `metrics.json` marks it finished)."""
    metrics = json.loads((run_dir / FINISHED_MARKER).read_text(encoding="utf-8"))
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    history = _history(run_dir)
    identity = {k: metrics.get(k) for k in ("objective", "model", "base_model", "random_init", "data", "strategy")}
    record = RunRecord(  # the folder's files are redacted already; what leaves it goes through the redaction again
        config=redact({"config": config, "lineage": metrics.get("lineage") or {},
                       "config_fingerprint": metrics.get("config_fingerprint"), "seed": config.get("seed"),
                       "run_dir": str(run_dir.resolve()), **identity, **(extra_config or {})}, secret_values(config)),
        history=history,
        final={f"{FINAL}{k}": v for k, v in flat_numbers(metrics).items()},
        last_step=max((step for step, _ in history), default=int(metrics.get("train_steps") or 0)))
    return record
