"""The field names of `transformers.TrainingArguments`, read without importing transformers.

Importing `transformers.TrainingArguments` takes seconds (it pulls in torch, accelerate and peft);
composing a config should not. The installed `training_args.py` is parsed with `ast` instead, so
the names always match the installed version. Falls back to importing when parsing fails.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
from pathlib import Path


def _from_source() -> list[str]:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(list(spec.submodule_search_locations)[0]) / "training_args.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
            return [
                stmt.target.id
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and not _is_init_false(stmt.value)
            ]
    return []


def _is_init_false(value: ast.expr | None) -> bool:
    """`field(init=False, ...)` marks state rather than an argument."""
    if isinstance(value, ast.Call):
        return any(k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords)
    return False


@functools.lru_cache(maxsize=1)
def training_argument_names() -> tuple[str, ...]:
    names = _from_source()
    if not names:  # unusual install layout: pay for the import
        from transformers import TrainingArguments

        names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    return tuple(names)


def suggest(name: str, choices: "set[str] | list[str] | tuple[str, ...]") -> str:
    """'did you mean ...?' for a misspelt name, else a pointer to the documentation."""
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"did you mean {' or '.join(close)}?" if close else "check the name against the library's documentation"


def suggest_trainer_field(name: str) -> str:
    return suggest(name, training_argument_names())
