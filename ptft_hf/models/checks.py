"""The model group's checks: a model and tokenizer that can be built or loaded, tokenizer flags that
hold, a block that fits, Hub ids that load offline."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from ptft_hf.errors import Problem
from ptft_hf.models.chat_templates import CHAT_TEMPLATES

_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


MODEL_DTYPES = (None, "auto", "float32", "bfloat16", "float16")  # model.dtype (null: auto)


def model_problems(cfg: DictConfig, objective: Any) -> list[Problem]:
    """Every problem of the model group; `objective`: the run's registry entry, or None when unknown."""
    model = cfg.model
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
    if model.tokenizer.get("add_eos_token") and objective is not None and not objective.classifies:
        problems.append(Problem("model.tokenizer.add_eos_token", f"is for classification (a decoder reads the last token); with "
                                f"objective={cfg.objective.name} it would end every prompt of the saved model with EOS",
                                "drop model.tokenizer.add_eos_token (packing puts EOS between documents itself)"))
    if not model.name_or_path and objective is not None and objective.language_modelling:  # block_size packs LM blocks only
        positions = next((model.config[k] for k in _POSITION_KEYS if k in model.config), None)
        if positions is not None and cfg.objective.block_size > positions:
            problems.append(Problem("objective.block_size", f"{cfg.objective.block_size} is longer than the model's {positions} positions",
                                    f"lower objective.block_size or raise model.config.{next(k for k in _POSITION_KEYS if k in model.config)}"))
    if model.get("dtype") not in MODEL_DTYPES:
        problems.append(Problem("model.dtype", f"'{model.dtype}' is not a dtype the model loads in",
                                f"use one of: {', '.join(str(d) for d in MODEL_DTYPES if d)} (auto: follows the trainer's precision)"))
    template = model.tokenizer.get("chat_template")
    if template is not None:
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
