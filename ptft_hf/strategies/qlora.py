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


class QLoraStrategy(LoraStrategy):
    def quantization_config(self) -> BitsAndBytesConfig:
        return BitsAndBytesConfig(**dict(self.cfg.quantization or {}))

    def model_kwargs(self) -> dict[str, Any]:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        return {"quantization_config": self.quantization_config(), "device_map": {"": device}}

    def prepare(self, model: PreTrainedModel) -> PreTrainedModel:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=self.cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return model
