"""`transformers.TrainingArguments` from the trainer group, built the same way by the run and by validation.

Validation builds them once before any data or model work, so that whatever TrainingArguments
refuses is reported with the other config problems instead of as a traceback mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ptft_hf.config.schema import set_trainer_fields
from ptft_hf.training.precision import resolve_trainer_precision


def trainer_kwargs(trainer: Mapping[str, Any], objective_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trainer fields a config sets, over an objective's needs (e.g. length grouping), with
    `bf16: auto` resolved for this machine (see `training.precision`).
    `resume_from_checkpoint` is the run's business (see `run_dir.resume_checkpoint`), not the Trainer's."""
    kwargs, _ = resolve_trainer_precision({**dict(objective_defaults or {}), **set_trainer_fields(trainer)})
    kwargs.pop("resume_from_checkpoint", None)
    if kwargs.get("dataloader_persistent_workers") and not kwargs.get("dataloader_num_workers"):
        # trainer=gpu keeps its workers across epochs; with the workers overridden to 0 there are
        # none to keep, and torch's DataLoader refuses the combination
        kwargs["dataloader_persistent_workers"] = False
    return kwargs


def build_training_arguments(trainer: Mapping[str, Any], output_dir: str | Path, seed: int,
                             objective_defaults: Mapping[str, Any] | None = None) -> Any:
    """TrainingArguments(output_dir, seed, **the trainer fields that are set)."""
    from transformers import TrainingArguments  # seconds to import: only when arguments are built

    return TrainingArguments(output_dir=str(output_dir), seed=seed, **trainer_kwargs(trainer, objective_defaults))
