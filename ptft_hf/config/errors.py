"""Turn Hydra/OmegaConf composition errors into one line: the field, what is wrong, the fix."""

from __future__ import annotations

import dataclasses
import re

from hydra.errors import MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from ptft_hf.config.trainer_fields import suggest_trainer_field


def _cause_chain(err: BaseException) -> list[BaseException]:
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _valid_keys(object_type: object) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _unknown_trainer_field(key: str) -> str:
    return f"{key}: is not a TrainingArguments field; {suggest_trainer_field(key.split('.', 1)[1])}"


def describe_compose_error(err: BaseException) -> str:
    """One line for a Hydra composition or OmegaConf error."""
    chain = _cause_chain(err)
    for e in chain:
        if isinstance(e, MissingConfigException) and e.missing_cfg_file:
            group, _, option = e.missing_cfg_file.rpartition("/")
            if e.options:
                return f"{group}={option}: no such option in group '{group}'; choose one of: {', '.join(sorted(e.options))}"
            return f"{e.missing_cfg_file}: config not found; check the name and the config search path"
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = e.full_key
            message = str(getattr(e, "msg", "") or e).splitlines()[0]
            if "not in" in message or "is not in struct" in message:
                if key.startswith("trainer."):
                    return _unknown_trainer_field(key)
                valid = _valid_keys(getattr(e, "object_type", None))
                fix = f"valid keys: {', '.join(valid)}" if valid else "check the spelling (use +key=value to add a new key)"
                return f"{key}: unknown key; {fix}"
            if "Missing mandatory value" in message:
                return f"{key}: a value is required; add {key}=..."
            return f"{key}: {message}"
    text = str(err).strip()
    match = re.search(r"Could not override '([^']+)'", text)
    if match:
        key = match.group(1)
        if key.startswith("trainer."):
            return _unknown_trainer_field(key)
        return f"{key}: unknown key; check the spelling (use +{key}=... to add a key)"
    first = text.splitlines()[0] if text else type(err).__name__
    return f"config: {first}"
