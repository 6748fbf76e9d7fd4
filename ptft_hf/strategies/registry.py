"""The strategies' registry: the one place the rest of ptft_hf asks what a strategy is.

A strategy is a class with the traits below, `model_kwargs` and `wrap`; `@register_strategy` adds it
under its `name`. The checks, the card, staging and merging ask the class (`strategy_class(name).adapter`),
never compare the name to a string.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from ptft_hf.errors import Problem, UserError
from ptft_hf.plugins import load_entry_points


class StrategyTraits:
    """What the rest of the code may ask a strategy class without building one."""

    name: ClassVar[str]
    display_name: ClassVar[str]  # for people: "full fine-tuning", "LoRA", ...
    saves_adapter_only: ClassVar[bool] = False  # trains and saves a peft adapter on a frozen base
    quantizes: ClassVar[bool] = False  # loads the base in 4 bits (bitsandbytes)

    @classmethod
    def problems(cls, cfg: Any) -> list[Problem]:
        """What this strategy refuses in a composed config."""
        return []


_REGISTRY: dict[str, type] = {}
S = TypeVar("S", bound=type)


def register_strategy(cls: S) -> S:
    """Class decorator: make `cls` available as `strategy.name=cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


ENTRY_POINT_GROUP = "ptft_hf.strategies"  # installed packages add strategies under this group


def _load_entry_points() -> None:
    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY)


def strategy_names() -> list[str]:
    _load_entry_points()
    return list(_REGISTRY)


def find_strategy(name: str) -> type | None:
    if name not in _REGISTRY:
        _load_entry_points()
    return _REGISTRY.get(name)


def strategy_class(name: str) -> Any:
    """The registered strategy class `name`; a UserError naming the choices otherwise."""
    cls = find_strategy(name)
    if cls is None:
        raise UserError([unknown_strategy_problem(name)])
    return cls


def unknown_strategy_problem(name: str) -> Problem:
    return Problem("strategy.name", f"'{name}' is not supported", f"use one of: {', '.join(strategy_names())}")
