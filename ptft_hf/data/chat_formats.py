"""Chat data formats for SFT: `messages`, `alpaca`, `sharegpt` and `prompt_response`, read into one
shape (a `messages` list of {role, content}, or today's `prompt`/`response` columns).

- `messages`: a list of {role, content} per record (OpenAI / transformers chat format).
- `alpaca`: `instruction`, optional `input` (joined to the instruction by a newline, as LLaMA-Factory
  does), `output`, optional `system`: one user turn and one assistant turn.
- `sharegpt`: `conversations`, a list of {from, value} with `from` in human/user, gpt/assistant/model,
  system; optional `system` column.
- `prompt_response`: `prompt` and `response` columns (`data.prompt_column`/`data.response_column`).

`data.fields.NAME=COLUMN` maps a canonical name (messages, role, content, instruction, input, output,
system, conversations, from, value, prompt, response) onto the data's own column or key. With
`data.chat_format` null the format is sniffed from the columns and the first records, and logged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from datasets import Dataset

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

CHAT_FORMATS = ("messages", "alpaca", "sharegpt", "prompt_response")
FIELD_NAMES = ("messages", "role", "content", "instruction", "input", "output", "system", "conversations", "from", "value",
               "prompt", "response")
# ShareGPT's `from` values the chat templates render, as the role they render them as
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}
SNIFF_RECORDS = 5


def field_name(cfg: Any, name: str) -> str:
    """The column (or key) that holds canonical field `name`: `data.fields.NAME`, else the legacy
    `data.messages_column`/`prompt_column`/`response_column`, else the name itself."""
    mapped = (cfg.fields or {}).get(name)
    if mapped:
        return str(mapped)
    legacy = {"messages": cfg.messages_column, "prompt": cfg.prompt_column, "response": cfg.response_column}
    return str(legacy.get(name) or name)


def _items(ds: Dataset, column: str) -> list[dict[str, Any]]:
    """The keys of the first records' list items (a list-of-dicts column), as dicts."""
    out: list[dict[str, Any]] = []
    for row in ds.select(range(min(SNIFF_RECORDS, len(ds))))[column]:
        out += [item for item in (row or []) if isinstance(item, Mapping)]
    return out


def sniff_format(ds: Dataset, cfg: Any) -> str | None:
    """The format the columns and first records match, or None."""
    columns = set(ds.column_names)
    for list_column, fmt_keys in ((field_name(cfg, "messages"), "messages"), (field_name(cfg, "conversations"), "sharegpt")):
        if list_column in columns:
            items = _items(ds, list_column)
            if items and all(field_name(cfg, "from") in i and field_name(cfg, "value") in i for i in items):
                return "sharegpt"
            if items and all(field_name(cfg, "role") in i and field_name(cfg, "content") in i for i in items):
                return "messages"
            return fmt_keys
    if {field_name(cfg, "instruction"), field_name(cfg, "output")} <= columns:
        return "alpaca"
    if {field_name(cfg, "prompt"), field_name(cfg, "response")} <= columns:
        return "prompt_response"
    return None


def _require(ds: Dataset, cfg: Any, names: tuple[str, ...], fmt: str, where: str) -> None:
    for name in names:
        column = field_name(cfg, name)
        if column not in ds.column_names:
            raise UserError.of(f"data.fields.{name}", f"column '{column}' not in {where} (data.chat_format={fmt})",
                               f"set data.fields.{name}= to one of: {', '.join(ds.column_names)}")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _alpaca(record: dict[str, Any], cfg: Any) -> list[dict[str, str]]:
    system = _text(record.get(field_name(cfg, "system")))
    user = "\n".join(part for part in (_text(record[field_name(cfg, "instruction")]),
                                       _text(record.get(field_name(cfg, "input")))) if part.strip())
    return ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": _text(record[field_name(cfg, "output")])}]


def _sharegpt(record: dict[str, Any], cfg: Any, index: int, where: str) -> list[dict[str, str]]:
    key_from, key_value = field_name(cfg, "from"), field_name(cfg, "value")
    system = _text(record.get(field_name(cfg, "system")))
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for turn in record[field_name(cfg, "conversations")] or []:
        speaker = str(turn.get(key_from))
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise UserError.of("data.fields.from", f"record {index} of {where} has a turn from '{speaker}', which the "
                               "chat template cannot render (it renders system, user and assistant turns)",
                               f"drop or rewrite those turns; the roles read are: {', '.join(sorted(SHAREGPT_ROLES))}")
        messages.append({"role": role, "content": _text(turn.get(key_value))})
    return messages


def _messages(record: dict[str, Any], cfg: Any) -> list[dict[str, str]]:
    key_role, key_content = field_name(cfg, "role"), field_name(cfg, "content")
    return [{"role": str(m[key_role]), "content": _text(m[key_content])} for m in record[field_name(cfg, "messages")] or []]


def select_chat(ds: Dataset, cfg: Any, where: str) -> Dataset:
    """SFT rows as a `messages` column, or `prompt`/`response` columns (prompt_response), from any of
    the formats. Raises UserError (one line) when the records match no format or hold a turn the
    chat template cannot render."""
    fmt = getattr(cfg, "chat_format", None)
    if fmt is None:
        fmt = sniff_format(ds, cfg)
        if fmt is None:
            raise UserError.of("data.chat_format", f"the records of {where} match no chat format (keys found: "
                               f"{', '.join(ds.column_names)})", "set data.chat_format= to one of " + ", ".join(CHAT_FORMATS)
                               + " and map its columns with data.fields.NAME=COLUMN")
        log.info("%s: chat format '%s', sniffed from its columns (%s); set data.chat_format= to choose", where, fmt,
                 ", ".join(ds.column_names))
    if fmt == "prompt_response":
        _require(ds, cfg, ("prompt", "response"), fmt, where)
        prompt, response = field_name(cfg, "prompt"), field_name(cfg, "response")
        ds = ds.select_columns([prompt, response])
        ds = ds.rename_columns({c: new for c, new in ((prompt, "prompt"), (response, "response")) if c != new})
        return ds.filter(lambda b: [bool(p and r and str(p).strip() and str(r).strip()) for p, r in zip(b["prompt"], b["response"])],
                         batched=True, desc="dropping empty pairs")
    if fmt == "messages" and field_name(cfg, "role") == "role" and field_name(cfg, "content") == "content":
        _require(ds, cfg, ("messages",), fmt, where)  # as before formats existed: the column as it is
        column = field_name(cfg, "messages")
        return ds.select_columns([column]).rename_columns({column: "messages"} if column != "messages" else {})
    required = {"messages": ("messages",), "alpaca": ("instruction", "output"), "sharegpt": ("conversations",)}[fmt]
    _require(ds, cfg, required, fmt, where)
    if fmt == "alpaca":
        rows = [_alpaca(r, cfg) for r in ds]
    elif fmt == "sharegpt":
        rows = [_sharegpt(r, cfg, i, where) for i, r in enumerate(ds, start=1)]  # counted from 1, as lines are
    else:
        rows = [_messages(r, cfg) for r in ds]
    return Dataset.from_dict({"messages": rows})
