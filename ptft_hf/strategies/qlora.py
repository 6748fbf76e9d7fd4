"""QLoRA: the base loads in 4-bit NF4 (bitsandbytes, double quantisation), then LoRA trains on top.

`strategy.quantization` holds `transformers.BitsAndBytesConfig` fields, passed through. bitsandbytes
0.46+ runs 4-bit layers on the CPU too, so this strategy trains for real without a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel

from ptft_hf.strategies.lora import LoraStrategy


def keep_cpu_weights_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, a `Linear4bit` evaluated without gradients repacks its weight into
    an inference-only layout and keeps it; the next training forward then fails ("a view of a
    leaf Variable that requires grad is being used in an in-place operation"). Training evaluates
    between steps, so the repacking is switched off. Returns the number of layers touched.
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


class QLoraStrategy(LoraStrategy):
    def quantization_config(self) -> BitsAndBytesConfig:
        return BitsAndBytesConfig(**dict(self.cfg.quantization or {}))

    def model_kwargs(self) -> dict[str, Any]:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        return {"quantization_config": self.quantization_config(), "device_map": {"": device}}

    def prepare(self, model: PreTrainedModel) -> PreTrainedModel:
        keep_cpu_weights_trainable(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=self.cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return model
