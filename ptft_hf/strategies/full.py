"""Full training: every parameter trains (pretraining from scratch or full fine-tuning)."""

from __future__ import annotations

from typing import Any, Sequence

from transformers import PreTrainedModel

from ptft_hf.config.schema import StrategyConfig
from ptft_hf.strategies.registry import StrategyTraits, register_strategy


@register_strategy
class FullStrategy(StrategyTraits):
    name = "full"
    display_name = "full fine-tuning"
    saves_adapter_only = False

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg

    def model_kwargs(self, full_precision_modules: Sequence[str] = ()) -> dict[str, Any]:
        """Extra `from_pretrained` keyword arguments (quantisation configs for other strategies)."""
        return {}

    def wrap(self, model: PreTrainedModel, task_type: str | None = "CAUSAL_LM",
             modules_to_save: Sequence[str] = ()) -> PreTrainedModel:
        """Everything trains; `modules_to_save` (for adapter strategies) changes nothing here."""
        if self.cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        for param in model.parameters():
            param.requires_grad_(True)
        return model
