"""QLoRA: the base loads in 4-bit NF4 (bitsandbytes, double quantisation), then LoRA trains on top.

`strategy.quantization` holds `transformers.BitsAndBytesConfig` fields, passed through. bitsandbytes
0.46+ runs 4-bit layers on the CPU too, so this strategy trains for real without a GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
from typing import Any, Sequence, TypeVar

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from ptft_hf.config.trainer_fields import suggest
from ptft_hf.errors import Problem
from ptft_hf.strategies.lora import LoraStrategy
from ptft_hf.strategies.registry import register_strategy

M = TypeVar("M", bound=torch.nn.Module)


def keep_cpu_weights_trainable(model: M) -> M:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, a `Linear4bit` evaluated without gradients repacks its weight into
    an inference-only layout and keeps it; the next training forward then fails ("a view of a
    leaf Variable that requires grad is being used in an in-place operation"). Training evaluates
    between steps, so the repacking is switched off. Returns the model. A model reloaded to check
    an adapter trained this way must take the same path (the two kernels differ by ~1e-3).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def copy_mapped_cpu_tensors(model: torch.nn.Module) -> int:
    """Give a quantised model's full-precision CPU tensors memory of their own.

    transformers reads a safetensors checkpoint through a memory map. The layers left in full
    precision (embeddings, norms, biases) keep pointing into that map, which keeps the whole
    mapping, with every fp32 page the quantiser read, resident for the life of the model: 324 of
    a 110M GPT-2's 421 MB of mapped pages in benchmarks W3. Copying those tensors lets the
    mapping go. 4-bit weights are already copies; on a GPU nothing points into the map.
    Returns the number of tensors copied.
    """
    copied, seen = 0, set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or tensor.device.type != "cpu" or type(tensor).__name__ == "Params4bit":
            continue
        seen.add(id(tensor))  # tied weights (GPT-2's embedding and head) are one tensor
        tensor.data = tensor.data.clone()
        copied += 1
    gc.collect()  # the map closes once the last tensor into it is gone
    return copied


AUTO_DTYPE_FIELDS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


def unresolved_auto_as_float32(fields: dict[str, Any]) -> dict[str, Any]:
    """BitsAndBytesConfig fields with a leftover `auto` dtype as float32. A run resolves `auto` to the
    trainer's precision before loading (`training.dtypes.apply_dtype_plan`); code that builds the
    strategy without a trainer (a merge, a benchmark arm) gets float32, which every device runs."""
    return {k: ("float32" if k in AUTO_DTYPE_FIELDS and v == "auto" else v) for k, v in fields.items()}


@register_strategy
class QLoraStrategy(LoraStrategy):
    name = "qlora"
    display_name = "QLoRA"
    quantizes = True

    @classmethod
    def problems(cls, cfg: Any) -> list[Problem]:
        """bitsandbytes installed, a pretrained base to quantise, BitsAndBytesConfig fields."""
        problems = super().problems(cfg)
        strategy = cfg.strategy
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(Problem("strategy", "qlora needs bitsandbytes, which is not installed",
                                    "pip install bitsandbytes (or use strategy=lora)"))
        if not cfg.model.name_or_path:
            problems.append(Problem("model.name_or_path", "qlora quantises a pretrained model, but the model is built from scratch",
                                    "set model.name_or_path=FOLDER_OR_ID (e.g. a pretraining run's model/)"))
        if not strategy.quantization:
            problems.append(Problem("strategy.quantization", "qlora needs BitsAndBytesConfig settings",
                                    "use strategy=qlora's defaults or set strategy.quantization.load_in_4bit=true"))
            return problems
        valid = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
        problems += [Problem(f"strategy.quantization.{key}", "is not a BitsAndBytesConfig argument", suggest(key, valid))
                     for key in strategy.quantization if key not in valid]
        return problems

    def quantization_config(self, full_precision_modules: Sequence[str] = ()) -> BitsAndBytesConfig:
        fields = unresolved_auto_as_float32(dict(self.cfg.quantization or {}))
        if full_precision_modules:
            fields["llm_int8_skip_modules"] = [*(fields.get("llm_int8_skip_modules") or []), *full_precision_modules]
        return BitsAndBytesConfig(**fields)

    def model_kwargs(self, full_precision_modules: Sequence[str] = ()) -> dict[str, Any]:
        """`full_precision_modules`: layers kept out of 4-bit, such as a classification head that the
        checkpoint lacks (newly initialised layers are not quantised properly, and train in full)."""
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        return {"quantization_config": self.quantization_config(full_precision_modules), "device_map": {"": device}}

    def prepare(self, model: PreTrainedModel) -> PreTrainedModel:
        from peft import prepare_model_for_kbit_training

        keep_cpu_weights_trainable(model)
        copy_mapped_cpu_tensors(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=self.cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return model
