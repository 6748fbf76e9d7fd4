"""The trainer group's checks (TrainingArguments field names and values, report_to integrations) and
the engine combinations refused before anything runs (the `distributed` group and the trainer's
fsdp/deepspeed fields), each with the field to change and how."""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.schema import set_trainer_fields
from ptft_hf.config.trainer_fields import suggest, training_argument_names
from ptft_hf.distributed import started_by_launcher
from ptft_hf.errors import Problem
from ptft_hf.training.arguments import build_training_arguments, trainer_kwargs

# TrainingArguments fields the run sets itself from other groups.
RUN_OWNED_TRAINER_FIELDS = {"output_dir": "the run folder (hydra.run.dir=...)", "seed": "the top-level seed=..."}


def trainer_field_names() -> set[str]:
    return set(training_argument_names())


def _check_trainer(trainer: Any) -> list[Problem]:
    problems = []
    valid = trainer_field_names()
    for key in set_trainer_fields(trainer):
        if key in RUN_OWNED_TRAINER_FIELDS:
            problems.append(Problem(f"trainer.{key}", "is set by the run", f"use {RUN_OWNED_TRAINER_FIELDS[key]} instead"))
        elif key not in valid:
            problems.append(Problem(f"trainer.{key}", "is not a TrainingArguments field", suggest(key, valid)))
    report_to = trainer.get("report_to")
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for integration, module in REPORT_TO_MODULES.items():
        if integration in report_to and importlib.util.find_spec(module) is None:
            problems.append(Problem("trainer.report_to", f"{integration} is not installed",
                                    f"pip install {module} (or drop it from trainer.report_to)"))
    return problems


REPORT_TO_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}

# Values TrainingArguments passes through but torch.optim.Adam/AdamW refuse when the Trainer builds
# the optimizer, after the data, tokenizer and model work (torch/optim/adam.py: `not 0.0 <= lr`,
# `not 0.0 <= eps`, `not 0.0 <= betas[i] < 1.0`, `not 0.0 <= weight_decay`), and values the Trainer
# misuses without a word (a negative max_grad_norm turns clipping off). field: (accepts, what, fix).
_NON_NEGATIVE = "is negative, which the optimizer refuses"
_BETA = "is outside [0, 1), which the optimizer refuses"
TRAINER_VALUE_CHECKS: dict[str, tuple[Callable[[float], bool], str, str]] = {
    "learning_rate": (lambda v: 0.0 <= v, _NON_NEGATIVE, "set a positive value such as 3e-4"),
    "weight_decay": (lambda v: 0.0 <= v, _NON_NEGATIVE, "use 0 (no decay) or a small positive value such as 0.01"),
    "adam_beta1": (lambda v: 0.0 <= v < 1.0, _BETA, "use a value such as 0.9"),
    "adam_beta2": (lambda v: 0.0 <= v < 1.0, _BETA, "use a value such as 0.999"),
    "adam_epsilon": (lambda v: 0.0 <= v, _NON_NEGATIVE, "use a small positive value such as 1e-8"),
    "max_grad_norm": (lambda v: 0.0 <= v, "is negative, which is no gradient norm (the Trainer would skip clipping without saying so)",
                      "use a positive norm such as 1.0, or 0 to turn clipping off"),
    "warmup_steps": (lambda v: 0.0 <= v, "is negative, which TrainingArguments refuses",
                     "use 0 (no warmup), a number of steps, or a fraction of the steps below 1 such as 0.03"),
}
# Whole numbers of at least 1: a batch size of 0 is refused by the DataLoader, 0 accumulation steps divide by zero.
TRAINER_COUNT_CHECKS: dict[str, tuple[str, str]] = {
    "per_device_train_batch_size": ("is not a positive whole number, which the data loader refuses", "use 1 or more, such as 8"),
    "per_device_eval_batch_size": ("is not a positive whole number, which the data loader refuses", "use 1 or more, such as 8"),
    "gradient_accumulation_steps": ("is not a positive whole number of batches per optimiser step",
                                    "use 1 (no accumulation) or more"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trainer_value_problem(key: str, value: Any) -> Problem | None:
    field = f"trainer.{key}"
    if key in TRAINER_VALUE_CHECKS:
        accepts, what, fix = TRAINER_VALUE_CHECKS[key]
        if not _is_number(value) or math.isnan(value):
            return Problem(field, f"{value!r} is not a number", fix)
        return None if accepts(value) else Problem(field, f"{value} {what}", fix)
    if key in TRAINER_COUNT_CHECKS:
        what, fix = TRAINER_COUNT_CHECKS[key]
        whole = isinstance(value, int) and not isinstance(value, bool)
        return None if whole and value >= 1 else Problem(field, f"{value!r} {what}", fix)
    return None


def _shown(value: Any) -> str:
    """A value as typed in an override: true, 0.5, steps, [a, b]."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _refusal(kwargs: dict[str, Any], seed: Any) -> str | None:
    """What TrainingArguments says when it refuses these fields (one line), or None."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the run builds them again and shows the warnings then
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # nothing is written: TrainingArguments only records output_dir
            build_training_arguments(kwargs, Path(tempfile.gettempdir()) / "ptft_hf-validation", seed)
    except Exception as err:  # whatever it raises is a refusal of these settings, reported as one
        return " ".join(str(err).split()) or type(err).__name__
    finally:
        hf_logging.set_verbosity(verbosity)
    return None


def _training_arguments_problems(kwargs: dict[str, Any], seed: Any) -> list[Problem]:
    """Build TrainingArguments from the set fields as the run will; each refusal becomes one problem
    on the fields it concerns (those whose removal ends it, else those whose removal changes it),
    and the rest are tried again."""
    problems: list[Problem] = []
    kwargs = dict(kwargs)
    while (error := _refusal(kwargs, seed)) is not None:
        without = {k: _refusal({o: v for o, v in kwargs.items() if o != k}, seed) for k in kwargs}
        keys = [k for k, e in without.items() if e is None] or [k for k, e in without.items() if e != error]
        if not keys:  # refused whatever is left out: not one field's doing
            problems.append(Problem("trainer", f"transformers.TrainingArguments refuses these settings ({error})",
                                    "check the trainer.* values against the TrainingArguments documentation"))
            break
        fields = [f"trainer.{k}" for k in keys]
        settings = ", ".join(f"{k}={_shown(kwargs[k])}" for k in keys)
        problems.append(Problem(", ".join(fields), f"transformers.TrainingArguments refuses {settings} ({error})",
                                f"change or drop {' or '.join(fields)}"))
        kwargs = {k: v for k, v in kwargs.items() if k not in keys}
    return problems


ENGINE_FIELDS = {"fsdp", "fsdp_config", "deepspeed"}


def _check_trainer_values(cfg: DictConfig, engine_refused: bool = False) -> list[Problem]:
    """The values of the trainer fields: what the optimizer or data loader would refuse later, then
    whatever TrainingArguments refuses (one problem per field). Names are `_check_trainer`'s business.
    `engine_refused`: the engine fields were reported already (`distributed_problems`) and are left out.

    The objective's own TrainingArguments (e.g. length grouping) are fixed valid values and left out."""
    valid = trainer_field_names()
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    left_out = RUN_OWNED_TRAINER_FIELDS.keys() | (ENGINE_FIELDS if engine_refused else set())
    kwargs = {k: v for k, v in trainer_kwargs(trainer).items() if k in valid and k not in left_out}
    problems = [p for p in (_trainer_value_problem(k, v) for k, v in kwargs.items()) if p]
    refused = {p.field.removeprefix("trainer.") for p in problems}
    return problems + _training_arguments_problems({k: v for k, v in kwargs.items() if k not in refused}, cfg.get("seed", 42))


def trainer_problems(cfg: DictConfig, quantizes: bool) -> list[Problem]:
    """The trainer's field names and values and the engine settings; `quantizes`: the strategy loads a 4-bit base."""
    engine = distributed_problems(cfg, quantizes)
    return _check_trainer(cfg.trainer) + _check_trainer_values(cfg, engine_refused=bool(engine)) + engine


def _engine_field(cfg: DictConfig, trainer_field: str) -> str:
    """Name the preset when one set the field, else the trainer field itself."""
    name = cfg.get("distributed", {}).get("name", "none")
    return f"distributed={name}" if name not in (None, "none", "ddp") else f"trainer.{trainer_field}"


def _dtype_name(value: Any) -> str:
    return str(value).removeprefix("torch.")


def distributed_problems(cfg: DictConfig, quantizes: bool) -> list[Problem]:
    """What the engine settings cannot do: two engines at once, a preset without what it needs,
    DeepSpeed where accelerate would drop it, FSDP on a process no launcher started, QLoRA
    weights FSDP cannot shard. `quantizes`: the strategy loads a 4-bit base."""
    trainer, strategy = cfg.trainer, cfg.strategy
    fsdp, deepspeed = bool(trainer.get("fsdp")), trainer.get("deepspeed")
    problems: list[Problem] = []
    if fsdp and deepspeed:
        return [Problem("trainer.deepspeed", "is set together with trainer.fsdp; a run uses one engine",
                        "choose one preset: distributed=fsdp or distributed=deepspeed_zero3")]
    if cfg.get("distributed", {}).get("name") == "fsdp_qlora" and not quantizes:
        problems.append(Problem("distributed", f"fsdp_qlora shards a 4-bit base, but strategy={strategy.name} loads none",
                                "add strategy=qlora, or use distributed=fsdp"))
    if deepspeed:
        field = _engine_field(cfg, "deepspeed")
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(Problem(field, "needs the deepspeed package, which is not installed",
                                    "pip install 'ptft_hf[deepspeed]' (GPUs), or use distributed=fsdp"))
        if trainer.get("use_cpu"):
            problems.append(Problem(field, "DeepSpeed runs on GPUs only; with trainer.use_cpu=true accelerate would train "
                                    "without it", "use trainer=gpu, or distributed=fsdp / ddp on CPUs"))
    if fsdp and not started_by_launcher():
        # no launcher (torchrun / accelerate launch): accelerate would train without FSDP, silently
        field = _engine_field(cfg, "fsdp")
        problems.append(Problem(field, "shards the model across processes, but no launcher started this one",
                                f"launch with `torchrun --nproc_per_node N -m ptft_hf ...`, or drop {field}"))
    if fsdp and quantizes and strategy.quantization:
        compute = _dtype_name(strategy.quantization.get("bnb_4bit_compute_dtype") or "float32")
        storage = _dtype_name(strategy.quantization.get("bnb_4bit_quant_storage") or "uint8")
        if storage != compute:
            problems.append(Problem("strategy.quantization.bnb_4bit_quant_storage",
                                    f"is {storage}, but FSDP shards only floating-point storage equal to the compute "
                                    f"dtype ({compute}); it would fail with \"cannot flatten integer dtype tensors\"",
                                    f"set strategy.quantization.bnb_4bit_quant_storage={compute} "
                                    "(distributed=fsdp_qlora sets it to the compute dtype)"))
    return problems
