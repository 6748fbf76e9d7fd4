"""The data group's checks: sources that exist, extra corpora, streaming, mixtures and replay.

`objective` is the registry entry of the run's objective (`ptft_hf.objectives.registry`), None when
the name is unknown (then only what needs no objective is checked): only objectives that mix packed
causal blocks stream, weigh extra corpora and replay."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ptft_hf.data.builtin import BUILTIN_CORPORA
from ptft_hf.data.sources import resolve_files
from ptft_hf.errors import Problem, UserError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_sources(data: DictConfig) -> list[Problem]:
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
    return problems + _check_chat_format(data)


def _check_chat_format(data: DictConfig) -> list[Problem]:
    """`data.chat_format` is one of the formats; `data.fields` maps only the canonical names."""
    from ptft_hf.data.chat_formats import CHAT_FORMATS, FIELD_NAMES

    problems = []
    chat_format = data.get("chat_format")
    if chat_format is not None and chat_format not in CHAT_FORMATS:
        problems.append(Problem("data.chat_format", f"'{chat_format}' is not a chat format",
                                f"use one of {', '.join(CHAT_FORMATS)}, or null to sniff it from the records"))
    for name in sorted(set(data.get("fields") or {}) - set(FIELD_NAMES)):
        problems.append(Problem(f"data.fields.{name}", "is not a field of any chat format",
                                f"map one of: {', '.join(FIELD_NAMES)}"))
    return problems


EXTRA_TRAIN_KEYS = ("path", "format", "text_column", "sample_by", "repeat", "weight", "name")


def streaming_problems(cfg: DictConfig, objective: Any) -> list[Problem]:
    """`data.streaming=true` packs causal-LM blocks on the fly, and a stream has no length."""
    if not cfg.data.get("streaming"):
        return []
    problems = []
    if objective is not None and not objective.mixes_blocks:
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


def mixture_problems(cfg: DictConfig, objective: Any) -> list[Problem]:
    """Weighted extra corpora: causal-LM blocks only, and shares leaving some for the main data."""
    weights = [e.get("weight") for e in cfg.data.get("extra_train") or [] if hasattr(e, "get") and e.get("weight") is not None]
    problems = _replay_problems(cfg, weights, objective)
    if problems or not weights or not all(_is_number(w) for w in weights):
        return problems
    if objective is not None and not objective.mixes_blocks:
        problems.append(Problem("data.extra_train", f"weights mix causal-LM blocks, not objective={cfg.objective.name}",
                                "use objective=clm, or repeat: N to concatenate documents"))
    if sum(float(w) for w in weights) >= 1.0:
        problems.append(Problem("data.extra_train", f"the weights add up to {sum(float(w) for w in weights):g}, leaving "
                                "nothing for the main data", "keep their sum below 1 (the main data takes the rest)"))
    return problems + _mixture_name_problems(cfg.data)


def _mixture_name_problems(data: DictConfig) -> list[Problem]:
    """A mixture names each corpus once (its shares and metrics.json's `data_mixture` are keyed by
    name): two weighted corpora of one name, or one named as the main data, would merge silently."""
    from ptft_hf.data.mixture import mixture_name

    owners, problems = {str(data.get("name") or "data"): "data.name"}, []
    for i, extra in enumerate(data.get("extra_train") or []):
        if not hasattr(extra, "get") or extra.get("weight") is None or not extra.get("path"):
            continue
        name = mixture_name(extra, i)
        if name in owners:
            problems.append(Problem(f"data.extra_train[{i}].name", f"'{name}' is also the name of {owners[name]}; a mixture "
                                    "keys its shares by name", f"give this corpus a name of its own, e.g. name: {name}_{i}"))
        owners.setdefault(name, f"data.extra_train[{i}]")
    return problems


def _replay_problems(cfg: DictConfig, weights: list[Any], objective: Any) -> list[Problem]:
    """`data.replay`: a share below 1, of causal-LM blocks, mixed on disk (not in a stream)."""
    replay = cfg.data.get("replay") or 0.0
    if not replay:
        return []
    if not 0.0 < float(replay) < 1.0:
        return [Problem("data.replay", f"is {replay}, not a share of the training tokens",
                        "use a number between 0 and 1 (e.g. 0.2), or 0 for no replay")]
    if objective is not None and not objective.mixes_blocks:
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


def data_problems(cfg: DictConfig, objective: Any) -> list[Problem]:
    """Every problem of the data group; `objective`: the run's registry entry, or None when unknown."""
    return _check_sources(cfg.data) + streaming_problems(cfg, objective) + mixture_problems(cfg, objective)
