"""Objectives: each turns loaded texts, a tokenizer and a strategy into a model, data sets, collators
and metrics for the Trainer, and answers what the rest of the code asks about it (`registry.py`).
clm: causal LM on packed blocks; mlm: masked LM; classification: sequence classification; sft:
instruction / chat fine-tuning. A new objective is one module with an `@register_objective` class
plus a YAML in conf/objective/ (README: "Adding an objective")."""

from __future__ import annotations

from ptft_hf.objectives.base import Prepared
from ptft_hf.objectives.registry import (OBJECTIVES, Objective, find_objective, get_objective, objective_names,
                                         register_objective)
from ptft_hf.objectives import clm, mlm, classification, sft  # noqa: F401,E402,I001  (registered in this order)

__all__ = ["OBJECTIVES", "Objective", "Prepared", "find_objective", "get_objective", "objective_names", "register_objective"]
