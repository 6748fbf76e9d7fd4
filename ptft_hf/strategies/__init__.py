"""Training strategies: each turns its config into model-loading kwargs and a model wrapper.

full: every parameter trains. lora / dora: peft adapters on a frozen base (DoRA is LoRA with
`use_dora`). qlora: a 4-bit NF4 base (bitsandbytes) with LoRA adapters.
"""

from __future__ import annotations

from typing import Union

from ptft_hf.config.schema import StrategyConfig
from ptft_hf.strategies.full import FullStrategy
from ptft_hf.strategies.lora import LoraStrategy
from ptft_hf.strategies.qlora import QLoraStrategy

Strategy = Union[FullStrategy, LoraStrategy, QLoraStrategy]
STRATEGIES = {"full": FullStrategy, "lora": LoraStrategy, "dora": LoraStrategy, "qlora": QLoraStrategy}


def get_strategy(cfg: StrategyConfig) -> Strategy:
    return STRATEGIES[cfg.name](cfg)
