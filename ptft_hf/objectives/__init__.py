"""Objectives: each turns loaded texts, a tokenizer and a strategy into a model, data sets, collators
and metrics for the Trainer, and answers what the rest of the code asks about it (`registry.py`).
clm: causal LM on packed blocks; mlm: masked LM; classification: sequence classification; sft:
instruction / chat fine-tuning. A new objective is one module with an `@register_objective` class
plus a YAML in conf/objective/ (README: "Adding an objective"): every module of this package is
imported here, so a module dropped in registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from ptft_hf.objectives.base import Prepared
from ptft_hf.objectives.registry import (OBJECTIVES, Objective, find_objective, get_objective, objective_names,
                                         register_objective)

_BUILT_IN_ORDER = ("clm", "mlm", "classification", "sft")  # the order `use one of:` lists them in
for _module in sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "registry")),
                      key=lambda name: (_BUILT_IN_ORDER.index(name) if name in _BUILT_IN_ORDER else len(_BUILT_IN_ORDER), name)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["OBJECTIVES", "Objective", "Prepared", "find_objective", "get_objective", "objective_names", "register_objective"]
