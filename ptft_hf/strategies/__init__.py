"""Training strategies: each turns its config into model-loading kwargs and a model wrapper, and
answers what the rest of the code asks about it (`registry.py`).

full: every parameter trains. lora / dora: peft adapters on a frozen base (DoRA is LoRA with
`use_dora`). qlora: a 4-bit NF4 base (bitsandbytes) with LoRA adapters.
"""

from __future__ import annotations

from typing import Any

from ptft_hf.config.schema import StrategyConfig
from ptft_hf.strategies.registry import (StrategyTraits, find_strategy, register_strategy, strategy_class,
                                         strategy_names)
from ptft_hf.strategies.full import FullStrategy  # noqa: E402  (registers the built-in strategies)
from ptft_hf.strategies.lora import DoraStrategy, LoraStrategy  # noqa: E402
from ptft_hf.strategies.qlora import QLoraStrategy  # noqa: E402

Strategy = Any  # an instance of a registered strategy class


def get_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy `cfg.name` built from its settings."""
    return strategy_class(cfg.name)(cfg)


__all__ = ["DoraStrategy", "FullStrategy", "LoraStrategy", "QLoraStrategy", "Strategy", "StrategyTraits", "find_strategy",
           "get_strategy", "register_strategy", "strategy_class", "strategy_names"]
