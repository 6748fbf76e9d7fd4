"""Cross-group validation: runs before any download or training and reports every problem at once."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.distributed_checks import distributed_problems
from ptft_hf.config.schema import set_trainer_fields
from ptft_hf.config.trainer_fields import training_argument_names
from ptft_hf.config.training_args import trainer_kwargs

from ptft_hf.data.builtin import BUILTIN_CORPORA
from ptft_hf.data.sources import resolve_files
from ptft_hf.errors import Problem, UserError

SUPPORTED_OBJECTIVES = ("clm", "mlm", "classification", "sft")
SUPPORTED_STRATEGIES = ("full", "lora", "dora", "qlora")
PEFT_STRATEGIES = ("lora", "dora", "qlora")
# TrainingArguments fields the run sets itself from other groups.
RUN_OWNED_TRAINER_FIELDS = {"output_dir": "the run folder (hydra.run.dir=...)", "seed": "the top-level seed=..."}
_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def trainer_field_names() -> set[str]:
    return set(training_argument_names())


def _suggest(name: str, choices: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"did you mean {' or '.join(close)}?" if close else "check the name against the library's documentation"


def suggest_trainer_field(name: str) -> str:
    return _suggest(name, trainer_field_names())


def _check_trainer(trainer: Any) -> list[Problem]:
    problems = []
    valid = trainer_field_names()
    for key in set_trainer_fields(trainer):
        if key in RUN_OWNED_TRAINER_FIELDS:
            problems.append(Problem(f"trainer.{key}", "is set by the run", f"use {RUN_OWNED_TRAINER_FIELDS[key]} instead"))
        elif key not in valid:
            problems.append(Problem(f"trainer.{key}", "is not a TrainingArguments field", _suggest(key, valid)))
    report_to = trainer.get("report_to")
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for integration, module in REPORT_TO_MODULES.items():
        if integration in report_to and importlib.util.find_spec(module) is None:
            problems.append(Problem("trainer.report_to", f"{integration} is not installed",
                                    f"pip install {module} (or drop it from trainer.report_to)"))
    return problems


REPORT_TO_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

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

    from ptft_hf.config.training_args import build_training_arguments

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


def _check_data(data: DictConfig) -> list[Problem]:
    problems = []
    for field in ("path", "eval_path"):
        value = data.get(field)
        if value:
            try:
                resolve_files(f"data.{field}", value)
            except UserError as err:
                problems.extend(err.problems)
    if not (data.path or data.hub_id or data.builtin):
        problems.append(Problem("data.path", f"is required by data={data.name} (no data source is set)",
                                "add data.path=FILE (a file, glob or folder), data.hub_id=ID, or choose data=builtin_docs"))
    if data.builtin and not data.path and data.builtin not in BUILTIN_CORPORA:
        problems.append(Problem("data.builtin", f"no builtin corpus '{data.builtin}'", f"use one of: {', '.join(BUILTIN_CORPORA)}"))
    if data.sample_by not in ("line", "paragraph", "document"):
        problems.append(Problem("data.sample_by", f"'{data.sample_by}' is not a way to split text", "use line, paragraph or document"))
    for i, extra in enumerate(data.get("extra_train") or []):
        problems += _check_extra_train(f"data.extra_train[{i}]", extra)
    return problems


EXTRA_TRAIN_KEYS = ("path", "format", "text_column", "sample_by", "repeat", "weight", "name")


def streaming_problems(cfg: DictConfig) -> list[Problem]:
    """`data.streaming=true` packs causal-LM blocks on the fly, and a stream has no length."""
    if not cfg.data.get("streaming"):
        return []
    problems = []
    if cfg.objective.name != "clm":
        problems.append(Problem("data.streaming", f"streams causal-LM pretraining only, not objective={cfg.objective.name}",
                                "use objective=clm, or drop data.streaming"))
    max_steps = cfg.trainer.get("max_steps")
    if max_steps is None or max_steps <= 0:
        problems.append(Problem("trainer.max_steps", "is not set, but a stream has no length to count epochs by",
                                "set trainer.max_steps=N"))
    for i, extra in enumerate(cfg.data.extra_train or []):
        if hasattr(extra, "keys") and extra.get("weight") is None:
            problems.append(Problem(f"data.extra_train[{i}].weight", "is not set; a stream mixes corpora by token share only",
                                    "give it a share of the training tokens, e.g. weight: 0.1"))
    if cfg.data.stream_eval_documents < 1 and not (cfg.data.eval_path or cfg.data.eval_split):
        problems.append(Problem("data.stream_eval_documents", f"{cfg.data.stream_eval_documents} leaves nothing to evaluate",
                                "use at least 1 (200 is the default), or set data.eval_path="))
    return problems


def _check_extra_train(field: str, extra: Any) -> list[Problem]:
    if not hasattr(extra, "keys") or not extra.get("path"):
        return [Problem(field, "needs a path", "write it as {path: FILE, text_column: text, repeat: 1}")]
    problems = [Problem(f"{field}.{key}", "is not a known key", f"use only {', '.join(EXTRA_TRAIN_KEYS)}")
                for key in extra.keys() if key not in EXTRA_TRAIN_KEYS]
    try:
        resolve_files(f"{field}.path", extra["path"])
    except UserError as err:
        problems.extend(err.problems)
    repeat = extra.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.append(Problem(f"{field}.repeat", f"{repeat!r} is not a positive whole number", "use 1 (default), 2, 3, ..."))
    weight = extra.get("weight")
    if weight is not None:
        if not _is_number(weight) or not 0.0 < float(weight) < 1.0:
            problems.append(Problem(f"{field}.weight", f"{weight!r} is not a share of the training tokens",
                                    "use a number between 0 and 1, e.g. 0.1 for 10%"))
        if "repeat" in extra:
            problems.append(Problem(f"{field}.repeat", "is set together with weight; a weight sets the share itself",
                                    "drop repeat (weight mixes by tokens) or weight (repeat concatenates documents)"))
    return problems


def mixture_problems(cfg: DictConfig) -> list[Problem]:
    """Weighted extra corpora: causal-LM blocks only, and shares leaving some for the main data."""
    weights = [e.get("weight") for e in cfg.data.get("extra_train") or [] if hasattr(e, "get") and e.get("weight") is not None]
    problems = _replay_problems(cfg, weights)
    if problems or not weights or not all(_is_number(w) for w in weights):
        return problems
    if cfg.objective.name != "clm":
        problems.append(Problem("data.extra_train", f"weights mix causal-LM blocks, not objective={cfg.objective.name}",
                                "use objective=clm, or repeat: N to concatenate documents"))
    if sum(float(w) for w in weights) >= 1.0:
        problems.append(Problem("data.extra_train", f"the weights add up to {sum(float(w) for w in weights):g}, leaving "
                                "nothing for the main data", "keep their sum below 1 (the main data takes the rest)"))
    return problems


def _replay_problems(cfg: DictConfig, weights: list[Any]) -> list[Problem]:
    """`data.replay`: a share below 1, of causal-LM blocks, mixed on disk (not in a stream)."""
    replay = cfg.data.get("replay") or 0.0
    if not replay:
        return []
    if not 0.0 < float(replay) < 1.0:
        return [Problem("data.replay", f"is {replay}, not a share of the training tokens",
                        "use a number between 0 and 1 (e.g. 0.2), or 0 for no replay")]
    if cfg.objective.name != "clm":
        return [Problem("data.replay", f"mixes causal-LM blocks, not objective={cfg.objective.name}",
                        "drop data.replay, or use it on a clm stage")]
    if cfg.data.get("streaming"):
        return [Problem("data.replay", "mixes data packed on disk, not a stream", "drop data.replay or data.streaming")]
    if _is_number_list(weights) and float(replay) + sum(float(w) for w in weights) >= 1.0:
        return [Problem("data.replay", "with data.extra_train's weights leaves nothing for the main data",
                        "keep replay plus the weights below 1")]
    return []


def _is_number_list(values: list[Any]) -> bool:
    return all(_is_number(v) for v in values)


def _check_model(cfg: DictConfig) -> list[Problem]:
    model, objective = cfg.model, cfg.objective
    problems = []
    if not model.name_or_path and not model.architecture:
        problems.append(Problem("model.name_or_path", "neither a checkpoint nor an architecture is set",
                                "set model.name_or_path=ID_OR_FOLDER or model.architecture=gpt2 with sizes in model.config"))
    if not model.name_or_path and not model.tokenizer.train and not model.tokenizer.name_or_path:
        problems.append(Problem("model.tokenizer", "a model built from a config needs a tokenizer",
                                "set model.tokenizer.train=true or model.tokenizer.name_or_path=ID_OR_FOLDER"))
    if model.tokenizer.train and model.tokenizer.vocab_size < 300:
        problems.append(Problem("model.tokenizer.vocab_size", f"{model.tokenizer.vocab_size} is below the 256 bytes plus merges",
                                "use at least 300 (4096 or more for real text)"))
    wrapping = [flag for flag in ("add_bos_token", "add_eos_token") if model.tokenizer.get(flag)]
    if model.tokenizer.train and model.tokenizer.kind == "wordpiece" and wrapping:
        problems.append(Problem(f"model.tokenizer.{wrapping[0]}", "a WordPiece tokenizer has no BOS/EOS: it puts [CLS] ... [SEP] "
                                "around every text already", f"drop model.tokenizer.{wrapping[0]}"))
    if model.tokenizer.get("add_eos_token") and objective.name != "classification":
        problems.append(Problem("model.tokenizer.add_eos_token", f"is for classification (a decoder reads the last token); with "
                                f"objective={objective.name} it would end every prompt of the saved model with EOS",
                                "drop model.tokenizer.add_eos_token (packing puts EOS between documents itself)"))
    if not model.name_or_path and objective.name in ("clm", "mlm"):  # block_size packs LM blocks only
        positions = next((model.config[k] for k in _POSITION_KEYS if k in model.config), None)
        if positions is not None and objective.block_size > positions:
            problems.append(Problem("objective.block_size", f"{objective.block_size} is longer than the model's {positions} positions",
                                    f"lower objective.block_size or raise model.config.{next(k for k in _POSITION_KEYS if k in model.config)}"))
    template = model.tokenizer.get("chat_template")
    if template is not None:
        from ptft_hf.models.chat_templates import CHAT_TEMPLATES

        if template not in CHAT_TEMPLATES:
            problems.append(Problem("model.tokenizer.chat_template", f"'{template}' is not a chat template here",
                                    f"use one of: {', '.join(CHAT_TEMPLATES)} (or null: the tokenizer's own)"))
    problems += offline_hub_problems(cfg)
    return problems


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1, true, yes, on), from the environment now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_hub_problems(cfg: DictConfig) -> list[Problem]:
    """With HF_HUB_OFFLINE=1, a Hub id that the local cache does not hold cannot load: say so before
    anything runs, rather than after the data is prepared."""
    if not hub_offline():
        return []
    from huggingface_hub import constants, try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                                 else constants.HF_HUB_CACHE)
    problems = []
    for field, value, probe in (("model.name_or_path", cfg.model.name_or_path, "config.json"),
                                ("model.tokenizer.name_or_path", cfg.model.tokenizer.get("name_or_path"), "tokenizer_config.json")):
        if not value or os.path.exists(str(value)) or str(value).count("/") > 1:
            continue  # unset, a local folder, or a path (a missing folder is the loader's to report)
        if not isinstance(try_to_load_from_cache(str(value), probe, cache_dir=cache), str):
            problems.append(Problem(field, f"'{value}' is a Hub id that is not in the local cache ({cache}), and HF_HUB_OFFLINE=1",
                                    f"pass a local folder via {field}=FOLDER (a saved model), or download it once with the Hub reachable"))
    return problems


def _check_strategy(cfg: DictConfig) -> list[Problem]:
    strategy = cfg.strategy
    problems: list[Problem] = []
    if strategy.name not in PEFT_STRATEGIES:
        return problems
    if not strategy.lora:
        return [Problem("strategy.lora", f"strategy={strategy.name} needs LoRA settings", f"use strategy={strategy.name} (conf/strategy/{strategy.name}.yaml) or set strategy.lora.r=8")]
    from peft import LoraConfig  # imported here: only PEFT runs pay for it

    valid = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type"}
    for key in strategy.lora:
        if key not in valid:
            problems.append(Problem(f"strategy.lora.{key}", "is not a peft.LoraConfig field", _suggest(key, valid)))
    if strategy.name == "dora" and not strategy.lora.get("use_dora"):
        problems.append(Problem("strategy.lora.use_dora", "is off for strategy=dora", "set strategy.lora.use_dora=true"))
    if strategy.name == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(Problem("strategy", "qlora needs bitsandbytes, which is not installed", "pip install bitsandbytes (or use strategy=lora)"))
        if not cfg.model.name_or_path:
            problems.append(Problem("model.name_or_path", "qlora quantises a pretrained model, but the model is built from scratch",
                                    "set model.name_or_path=FOLDER_OR_ID (e.g. a pretraining run's model/)"))
        if not strategy.quantization:
            problems.append(Problem("strategy.quantization", "qlora needs BitsAndBytesConfig settings", "use strategy=qlora's defaults or set strategy.quantization.load_in_4bit=true"))
        else:
            from transformers import BitsAndBytesConfig

            valid_q = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
            for key in strategy.quantization:
                if key not in valid_q:
                    problems.append(Problem(f"strategy.quantization.{key}", "is not a BitsAndBytesConfig argument", _suggest(key, valid_q)))
    return problems


def _check_objective(cfg: DictConfig) -> list[Problem]:
    objective, model = cfg.objective, cfg.model
    problems = []
    if objective.name == "mlm" and model.tokenizer.train and model.tokenizer.kind != "wordpiece":
        problems.append(Problem("model.tokenizer.kind", f"a {model.tokenizer.kind} tokenizer has no mask token, which objective=mlm needs",
                                "use model=tiny_bert (model.tokenizer.kind=wordpiece) or objective=clm"))
    if objective.name == "classification" and not cfg.data.label_column:
        problems.append(Problem("data.label_column", "is not set, but objective=classification needs labels",
                                "set data.label_column= to the column holding the label (e.g. category)"))
    if objective.get("line_by_line") and objective.name != "mlm":
        problems.append(Problem("objective.line_by_line", f"only masked-LM rows can be line by line, not objective={objective.name}",
                                "drop objective.line_by_line (clm packs blocks; sft has objective.packing)"))
    if objective.get("line_by_line") and objective.block_size < 3:
        problems.append(Problem("objective.block_size", f"{objective.block_size} leaves no room for text between [CLS] and [SEP]",
                                "use at least 3 (128 is usual)"))
    if objective.length_megabatch is not None and objective.length_megabatch < 1:
        problems.append(Problem("objective.length_megabatch", f"{objective.length_megabatch} batches cannot hold a batch",
                                "use at least 1 (200 is the default), or null for transformers' LengthGroupedSampler"))
    rdrop = objective.get("rdrop_alpha", 0.0)
    if rdrop < 0:
        problems.append(Problem("objective.rdrop_alpha", f"{rdrop} is negative", "use 0 (off) or a KL weight such as 1.0"))
    elif rdrop and objective.name != "classification":
        problems.append(Problem("objective.rdrop_alpha", f"R-Drop is for objective=classification, not objective={objective.name}",
                                "drop objective.rdrop_alpha, or set objective=classification"))
    if not 0.0 < objective.mlm_probability < 1.0:
        problems.append(Problem("objective.mlm_probability", f"{objective.mlm_probability} is not a probability", "use a value such as 0.15"))
    return problems


def repo_id_problem(repo_id: str | None, field: str = "hub.repo_id") -> Problem | None:
    """A Hub repo id must be `namespace/name` in the Hub's alphabet (checked offline)."""
    if not repo_id:
        return Problem(field, "missing", f"set {field}=user/name")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return Problem(field, f"'{repo_id}' is not a Hub repo id ({str(err).splitlines()[0]})", f"use {field}=user/name")
    if repo_id.count("/") != 1:
        return Problem(field, f"'{repo_id}' has no namespace", f"use {field}=user/name (your user or organisation name first)")
    return None


def hub_problems(hub: Any, strategy: str, objective: str, name: Callable[[str], str] = lambda key: f"hub.{key}") -> list[Problem]:
    """What would stop a push: no or a malformed repo id, no token, merging without an adapter.

    Checked before training so that hours of training do not end in a refused upload. The token
    is only looked for (huggingface_hub resolves HF_TOKEN or the login), never read into the config.
    `name` spells a field for the person reading (`hub.repo_id` in a config, `--repo-id` for a CLI).
    """
    problems: list[Problem] = []
    if not (hub.push or hub.dry_run):
        return problems
    uploads = hub.push and not hub.dry_run
    if uploads or hub.repo_id:
        problem = repo_id_problem(hub.repo_id, name("repo_id"))
        if problem:
            problems.append(problem)
    if hub.merged and strategy not in PEFT_STRATEGIES:
        problems.append(Problem(name("merged"), f"strategy={strategy} saves a full model, there is no adapter to merge",
                                f"drop {name('merged')}"))
    elif hub.merged and objective not in ("clm", "sft"):
        problems.append(Problem(name("merged"), f"merging supports causal-LM adapters, not objective={objective}",
                                f"drop {name('merged')} and publish the adapter"))
    if not hub.atol > 0:
        problems.append(Problem(name("atol"), f"{hub.atol} is not a positive tolerance", f"use {name('atol')}=1e-4"))
    if uploads:
        from huggingface_hub import get_token

        if not get_token():
            problems.append(Problem(name("push"), "no Hugging Face token found",
                                    "set HF_TOKEN or run `hf auth login`, or stage only with a dry run"))
    return problems


UNSAVED_BASE_FIX = "publish adapters of runs that start from a saved model (model.name_or_path)"


def base_is_unsaved(model: Any) -> bool:
    """A model built from a config (no name_or_path) or with fresh weights (random_init): its
    weights exist only in the run, so an adapter trained on it cannot be published."""
    return not model.name_or_path or bool(model.random_init)


def adapter_base_problems(cfg: DictConfig) -> list[Problem]:
    """Publishing an adapter (hub.push or hub.dry_run) whose base has random weights that are never
    saved: refused when staging (`ptft_hf.hub.stage`), so refused here before training. A pipeline
    stage starting from an earlier stage has that stage's model/ as name_or_path: not refused."""
    hub = cfg.hub
    if not (hub.push or hub.dry_run) or cfg.strategy.name not in PEFT_STRATEGIES or not base_is_unsaved(cfg.model):
        return []
    how = "has model.random_init=true" if cfg.model.name_or_path else "is built from a config"
    return [Problem("hub.dry_run" if hub.dry_run else "hub.push",
                    f"the adapter of strategy={cfg.strategy.name} would sit on a base with random weights that is never "
                    f"saved (model={cfg.model.name} {how})", UNSAVED_BASE_FIX)]


def collect_problems(cfg: DictConfig) -> list[Problem]:
    """Every problem found in the composed config, in group order."""
    problems: list[Problem] = []
    if cfg.objective.name not in SUPPORTED_OBJECTIVES:
        problems.append(Problem("objective.name", f"'{cfg.objective.name}' is not supported", f"use one of: {', '.join(SUPPORTED_OBJECTIVES)}"))
    if cfg.strategy.name not in SUPPORTED_STRATEGIES:
        problems.append(Problem("strategy.name", f"'{cfg.strategy.name}' is not supported", f"use one of: {', '.join(SUPPORTED_STRATEGIES)}"))
    if cfg.objective.block_size < 2:
        problems.append(Problem("objective.block_size", f"{cfg.objective.block_size} is too short", "use at least 2 (128 or more is usual)"))
    problems += _check_objective(cfg)
    problems += _check_strategy(cfg)
    problems += _check_model(cfg)
    problems += _check_data(cfg.data)
    problems += streaming_problems(cfg)
    problems += mixture_problems(cfg)
    problems += _check_trainer(cfg.trainer)
    engine = distributed_problems(cfg)
    problems += _check_trainer_values(cfg, engine_refused=bool(engine))
    problems += engine
    if "hub" in cfg:
        problems += hub_problems(cfg.hub, cfg.strategy.name, cfg.objective.name)
        problems += adapter_base_problems(cfg)
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise one UserError listing every problem, or return quietly."""
    problems = collect_problems(cfg)
    if problems:
        raise UserError(problems)
