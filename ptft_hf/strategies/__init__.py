"""Training strategies: each turns its config into model-loading kwargs and a model wrapper."""

from __future__ import annotations

from ptft_hf.config.schema import StrategyConfig
from ptft_hf.strategies.full import FullStrategy

STRATEGIES = {"full": FullStrategy}


def get_strategy(cfg: StrategyConfig) -> FullStrategy:
    return STRATEGIES[cfg.name](cfg)
