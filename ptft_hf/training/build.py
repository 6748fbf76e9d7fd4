"""The Trainer of a run: TrainingArguments from the trainer group, the run's callbacks, and the
`PtftTrainer` with the objective's data, collators and options (the benchmarks time this same trainer)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainingArguments

from ptft_hf.config.schema import PtftConfig
from ptft_hf.data.chat import prompt_text
from ptft_hf.objectives import Prepared, get_objective
from ptft_hf.training.arguments import build_training_arguments
from ptft_hf.training.callbacks import JsonlLogCallback, PrecisionRecord, SampleCallback, tensorboard_callback
from ptft_hf.training.precision import resume_precision
from ptft_hf.training.trainer import PtftTrainer

log = logging.getLogger(__name__)


def training_arguments(cfg: PtftConfig, run_dir: Path, objective_defaults: dict[str, Any],
                       resume_from: Path | None = None) -> TrainingArguments:
    """The trainer group's fields; an objective's needs (e.g. length grouping) unless set there.
    `resume_from_checkpoint` is the run's business (see `run_dir.resume_checkpoint`), not the Trainer's.
    `bf16: auto` is resolved here (as `resume_from` trained, when resuming), and the log says what it
    became and why."""
    fields, choice = resume_precision(vars(cfg.trainer), resume_from)
    if choice is not None:
        log.info("trainer.bf16=auto -> %s (trainer.bf16=false or true to choose)", choice.reason)
    return build_training_arguments(fields, run_dir / "checkpoints", cfg.seed, objective_defaults)


def build_trainer(conf: PtftConfig, run_dir: Path, tokenizer: Any, prepared: Prepared,
                  extra_callbacks: Sequence[Any] = (), resuming: bool = False, resume_from: Path | None = None) -> PtftTrainer:
    """TrainingArguments, callbacks and the PtftTrainer of a run, as `run` builds them (the
    benchmarks time this same trainer; `extra_callbacks` are appended to the run's own)."""
    args = training_arguments(conf, run_dir, prepared.training_overrides, resume_from)
    callbacks = run_callbacks(run_dir, tokenizer, conf, prepared, resuming=resuming) + [PrecisionRecord(args.bf16)]
    callbacks += list(extra_callbacks)
    if "tensorboard" in args.report_to:  # events in <run>/tensorboard, not inside checkpoints/
        args.report_to = [r for r in args.report_to if r != "tensorboard"]
        callbacks.append(tensorboard_callback(run_dir / "tensorboard"))
    return PtftTrainer(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train_dataset,
        eval_dataset=in_training_eval(prepared, conf.objective.name),
        data_collator=prepared.collator,
        eval_data_collator=prepared.eval_collator,
        processing_class=tokenizer,
        compute_metrics=prepared.compute_metrics,
        callbacks=callbacks,
        shift_labels=prepared.shift_labels,
        token_metrics=prepared.token_metrics,
        labelled_positions_only=prepared.labelled_positions_only,
        batch_observers=prepared.batch_observers,
        length_megabatch=conf.objective.length_megabatch,
        **get_objective(conf.objective.name).trainer_options(conf),
    )


def in_training_eval(prepared: Prepared, objective: str) -> Any:
    """What the Trainer evaluates during training (its `eval_dataset`, which `load_best_model_at_end`,
    `metric_for_best_model` and early stopping read): the validation split, never the test split.
    An objective written before validation splits existed gives none: its test split, with a warning."""
    if prepared.validation_dataset is not None:
        return prepared.validation_dataset
    log.warning("objective %s gives no validation_dataset: evaluation during training reads the test split "
                "(set Prepared.validation_dataset from splits['validation'] in its prepare)", objective)
    return prepared.eval_dataset


def prompt_formatter(prepared: Prepared, tokenizer: Any) -> Callable[[str], str] | None:
    """SFT samples: each configured prompt is a user turn, rendered with the chat template."""
    if "template" not in prepared.extras:
        return None
    template = prepared.extras["template"]
    return lambda prompt: prompt_text([{"role": "user", "content": prompt}], tokenizer, template)

def run_callbacks(run_dir: Path, tokenizer: Any, conf: PtftConfig, prepared: Prepared, resuming: bool = False) -> list[Any]:
    """Log and sample callbacks; a resumed run's logs already hold the evaluation before training."""
    callbacks: list[Any] = [JsonlLogCallback(run_dir / "train_log.jsonl", before_training=not resuming)]
    if prepared.generates:
        callbacks.append(SampleCallback(tokenizer, conf.samples, run_dir / "samples.jsonl", prompt_formatter(prepared, tokenizer),
                                        before_training=not resuming))
    return callbacks
