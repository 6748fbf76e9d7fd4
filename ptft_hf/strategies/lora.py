"""LoRA and DoRA through peft: the base model is frozen and small adapters train.

`strategy.lora` holds `peft.LoraConfig` fields and passes them through, except that
`target_modules: auto` becomes peft's "all-linear" (every Linear/Conv1D layer of the transformer
blocks, never the output head), which is the right set for GPT-2 (Conv1D), Llama/Qwen-style and
BERT-style models alike. Explicit names are checked against the model first, so a typo lists
the model's linear layers instead of failing deep inside peft.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ptft_hf.config.schema import StrategyConfig
from ptft_hf.config.trainer_fields import suggest
from ptft_hf.errors import Problem, UserError
from ptft_hf.strategies.registry import StrategyTraits, register_strategy

log = logging.getLogger(__name__)

AUTO_TARGETS = "auto"


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Distinct last-name parts of the model's linear layers (what `target_modules` matches)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) or type(module).__name__.startswith("Linear"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model: torch.nn.Module, requested: Any) -> Any:
    """'auto' -> peft's 'all-linear'; explicit names must each match a linear layer."""
    if requested in (None, AUTO_TARGETS):
        return "all-linear"
    if isinstance(requested, str):
        return requested  # a regex or 'all-linear': peft matches it
    available = linear_layer_names(model)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise UserError.of(
            "strategy.lora.target_modules", f"{', '.join(unknown)} match no linear layer of {type(model).__name__}",
            f"use auto or names from: {', '.join(available)}",
        )
    return list(requested)


def trainable_in_float32(model: torch.nn.Module) -> int:
    """Hold every trained half-precision tensor in float32 and return how many were cast. peft casts
    the adapters themselves (`autocast_adapter_dtype`); a head trained in full beside them
    (`modules_to_save`) is a copy of a bf16 base's layer, whose AdamW updates bf16 would round away."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast


@register_strategy
class LoraStrategy(StrategyTraits):
    """LoRA (and DoRA with `lora.use_dora: true`) on a frozen base."""

    name = "lora"
    display_name = "LoRA"
    saves_adapter_only = True

    @classmethod
    def problems(cls, cfg: Any) -> list[Problem]:
        """`strategy.lora` must hold peft.LoraConfig fields."""
        strategy = cfg.strategy
        if not strategy.lora:
            return [Problem("strategy.lora", f"strategy={strategy.name} needs LoRA settings",
                            f"use strategy={strategy.name} (conf/strategy/{strategy.name}.yaml) or set strategy.lora.r=8")]
        from peft import LoraConfig  # peft (and bitsandbytes with it) only where an adapter strategy is used

        valid = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type"}
        return [Problem(f"strategy.lora.{key}", "is not a peft.LoraConfig field", suggest(key, valid))
                for key in strategy.lora if key not in valid]

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg

    def model_kwargs(self, full_precision_modules: Sequence[str] = ()) -> dict[str, Any]:
        return {}

    def prepare(self, model: PreTrainedModel) -> PreTrainedModel:
        """Hook for strategies that must touch the base before adapters go on (QLoRA)."""
        if self.cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
            model.config.use_cache = False
        return model

    def lora_config(self, model: PreTrainedModel, task_type: str | None, modules_to_save: Sequence[str] = ()) -> Any:
        """The `peft.LoraConfig` of this strategy for `model`."""
        from peft import LoraConfig, TaskType

        fields = dict(self.cfg.lora or {})
        fields["target_modules"] = resolve_target_modules(model, fields.get("target_modules", AUTO_TARGETS))
        if modules_to_save:  # trained in full and saved with the adapter (e.g. a head the base lacks)
            fields["modules_to_save"] = sorted(set(fields.get("modules_to_save") or []) | set(modules_to_save))
        return LoraConfig(task_type=TaskType[task_type] if task_type else None, **fields)

    def wrap(self, model: PreTrainedModel, task_type: str | None = "CAUSAL_LM",
             modules_to_save: Sequence[str] = ()) -> PreTrainedModel:
        model = self.prepare(model)
        from peft import get_peft_model

        config = self.lora_config(model, task_type, modules_to_save)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as err:  # a target_modules pattern that matches nothing
            if "target_modules" not in str(err) and "Target modules" not in str(err):
                raise
            raise UserError.of(
                "strategy.lora.target_modules", f"{config.target_modules} match no module of {type(model).__name__}",
                f"use auto or names from: {', '.join(linear_layer_names(model))}",
            ) from err
        log.info("%s adapters on %s", "DoRA" if config.use_dora else "LoRA", sorted(config.target_modules))
        upcast = trainable_in_float32(peft_model)
        if upcast:
            log.info("dtypes: %d trained tensors of a half-precision base held in float32 (master weights)", upcast)
        return peft_model


@register_strategy
class DoraStrategy(LoraStrategy):
    """DoRA: LoRA with a learnt magnitude per output (`strategy.lora.use_dora: true`)."""

    name = "dora"
    display_name = "DoRA"

    @classmethod
    def problems(cls, cfg: Any) -> list[Problem]:
        problems = super().problems(cfg)
        if cfg.strategy.lora and not cfg.strategy.lora.get("use_dora"):
            problems.append(Problem("strategy.lora.use_dora", "is off for strategy=dora", "set strategy.lora.use_dora=true"))
        return problems
