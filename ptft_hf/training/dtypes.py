"""`model.dtype: auto` (the default): what each part of the model is held in, decided from the
trainer's precision, the strategy and the checkpoint's stored dtype.

Why these rules:
- Weights that train stay float32 (full fine-tuning, pretraining, LoRA adapters, a head trained in
  full beside them): bf16 autocast computes in bf16 either way, and an AdamW update of 1e-4 of a
  weight's size is below bf16's resolution (8 bits of mantissa), so bf16 master weights stop
  learning. This is mixed precision as transformers and accelerate do it.
- A frozen base (LoRA, DoRA) only multiplies: under bf16 training it is held as the checkpoint
  stores it (bf16 for the Hub presets: half the memory of float32, and exactly the published
  values); under fp32 training it is float32, since an fp32 matmul on bf16 weights would cast them
  on every step.
- QLoRA's 4-bit layers compute in the trainer's precision (bf16 or fp16 when it trains in it,
  else float32); its full-precision parts (embeddings, norms) follow the frozen-base rule.
- A model built from a config has nothing stored: float32.

An explicit `model.dtype` (float32, bfloat16, float16) or `bnb_4bit_compute_dtype` wins; the log
says which dtype each part has and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ptft_hf.config.schema import PtftConfig
from ptft_hf.strategies import strategy_class
from ptft_hf.training.precision import resume_precision

log = logging.getLogger(__name__)

AUTO = "auto"
HALF = ("bfloat16", "float16")


@dataclass(frozen=True)
class DtypePlan:
    """The dtypes a run loads and computes in, each with its reason (one log line each)."""

    load: str  # model.dtype as loaded: float32, bfloat16 or float16
    load_reason: str
    compute: str | None = None  # QLoRA's bnb_4bit_compute_dtype; None without 4-bit layers
    compute_reason: str = ""

    def lines(self) -> list[str]:
        out = [f"weights as loaded: {self.load} ({self.load_reason})"]
        if self.compute:
            out.append(f"4-bit layers compute in {self.compute} ({self.compute_reason})")
        return out


def training_precision(trainer: Mapping[str, Any]) -> str:
    """float32, bfloat16 or float16: what the trainer's resolved `bf16`/`fp16` fields train in."""
    if trainer.get("bf16"):
        return "bfloat16"
    return "float16" if trainer.get("fp16") else "float32"


def choose_dtypes(requested: str | None, precision: str, base_trains: bool, stored: str | None,
                  quantizes: bool = False, requested_compute: str | None = AUTO) -> DtypePlan:
    """The decision table (see the module docstring). `requested`: model.dtype (None or auto: decide);
    `precision`: what training computes in; `base_trains`: full training (no frozen base);
    `stored`: the checkpoint's dtype (None: built from a config, or unknown)."""
    if requested not in (None, AUTO):
        load, load_reason = requested, f"model.dtype={requested}"
    elif stored is None:
        load, load_reason = "float32", "built from a config (or stored dtype unknown): float32"
    elif base_trains:
        load, load_reason = "float32", (f"every weight trains: float32 master weights, {precision} compute"
                                        if precision != "float32" else "every weight trains, in float32")
    elif precision in HALF:
        load, load_reason = stored, f"frozen base under {precision} training: as the checkpoint stores it"
    else:
        load, load_reason = "float32", f"frozen base under float32 training (checkpoint stored in {stored})"
    if not quantizes:
        return DtypePlan(load, load_reason)
    if requested_compute not in (None, AUTO):
        return DtypePlan(load, load_reason, str(requested_compute), f"strategy.quantization.bnb_4bit_compute_dtype={requested_compute}")
    return DtypePlan(load, load_reason, precision, f"the trainer trains in {precision}")


def stored_dtype(name_or_path: str | None, revision: str | None = None, trust_remote_code: bool = False) -> str | None:
    """The dtype a checkpoint's config.json records (`dtype`, formerly `torch_dtype`); None when
    there is no checkpoint or its config cannot be read (then float32 is loaded)."""
    if not name_or_path:
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        log.debug("stored dtype of %s unreadable: %s", name_or_path, err)
        return None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def apply_dtype_plan(conf: PtftConfig, resume_from: Path | None = None) -> DtypePlan:
    """Decide the run's dtypes and write them into `conf` (model.dtype, and for a 4-bit base its
    compute and, where FSDP packs the weights into it, storage dtype), before the model loads.
    The precision is the trainer's, resolved as `build_trainer` resolves it (the CPU probe is cached)."""
    fields, _ = resume_precision(vars(conf.trainer), resume_from)
    precision = training_precision(fields)
    strategy = strategy_class(conf.strategy.name)
    model = conf.model
    stored = None if model.random_init else stored_dtype(model.name_or_path, model.revision, model.trust_remote_code)
    quantization = dict(conf.strategy.quantization or {})
    plan = choose_dtypes(model.dtype, precision, not strategy.saves_adapter_only, stored, strategy.quantizes,
                         quantization.get("bnb_4bit_compute_dtype", AUTO))
    model.dtype = plan.load
    if plan.compute is not None and conf.strategy.quantization is not None:
        conf.strategy.quantization["bnb_4bit_compute_dtype"] = plan.compute
        if quantization.get("bnb_4bit_quant_storage") == AUTO:  # distributed=fsdp_qlora: storage = compute dtype
            conf.strategy.quantization["bnb_4bit_quant_storage"] = plan.compute
    for line in plan.lines():
        log.info("dtypes: %s", line)
    return plan
