"""Engine combinations refused before anything runs (the `distributed` group and the trainer's
fsdp/deepspeed fields), each with the field to change and how."""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig

from ptft_hf.distributed import started_by_launcher
from ptft_hf.errors import Problem


def _engine_field(cfg: DictConfig, trainer_field: str) -> str:
    """Name the preset when one set the field, else the trainer field itself."""
    name = cfg.get("distributed", {}).get("name", "none")
    return f"distributed={name}" if name not in (None, "none", "ddp") else f"trainer.{trainer_field}"


def _dtype_name(value: Any) -> str:
    return str(value).removeprefix("torch.")


def distributed_problems(cfg: DictConfig) -> list[Problem]:
    """What the engine settings cannot do: two engines at once, a preset without what it needs,
    DeepSpeed where accelerate would drop it, FSDP on a process no launcher started, QLoRA
    weights FSDP cannot shard."""
    trainer, strategy = cfg.trainer, cfg.strategy
    fsdp, deepspeed = bool(trainer.get("fsdp")), trainer.get("deepspeed")
    problems: list[Problem] = []
    if fsdp and deepspeed:
        return [Problem("trainer.deepspeed", "is set together with trainer.fsdp; a run uses one engine",
                        "choose one preset: distributed=fsdp or distributed=deepspeed_zero3")]
    if cfg.get("distributed", {}).get("name") == "fsdp_qlora" and strategy.name != "qlora":
        problems.append(Problem("distributed", f"fsdp_qlora shards a 4-bit base, but strategy={strategy.name} loads none",
                                "add strategy=qlora, or use distributed=fsdp"))
    if deepspeed:
        field = _engine_field(cfg, "deepspeed")
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(Problem(field, "needs the deepspeed package, which is not installed",
                                    "pip install 'ptft_hf[deepspeed]' (GPUs), or use distributed=fsdp"))
        if trainer.get("use_cpu"):
            problems.append(Problem(field, "DeepSpeed runs on GPUs only; with trainer.use_cpu=true accelerate would train "
                                    "without it", "use trainer=gpu, or distributed=fsdp / ddp on CPUs"))
    if fsdp and not started_by_launcher():
        # no launcher (torchrun / accelerate launch): accelerate would train without FSDP, silently
        field = _engine_field(cfg, "fsdp")
        problems.append(Problem(field, "shards the model across processes, but no launcher started this one",
                                f"launch with `torchrun --nproc_per_node N -m ptft_hf ...`, or drop {field}"))
    if fsdp and strategy.name == "qlora" and strategy.quantization:
        compute = _dtype_name(strategy.quantization.get("bnb_4bit_compute_dtype") or "float32")
        storage = _dtype_name(strategy.quantization.get("bnb_4bit_quant_storage") or "uint8")
        if storage != compute:
            problems.append(Problem("strategy.quantization.bnb_4bit_quant_storage",
                                    f"is {storage}, but FSDP shards only floating-point storage equal to the compute "
                                    f"dtype ({compute}); it would fail with \"cannot flatten integer dtype tensors\"",
                                    f"set strategy.quantization.bnb_4bit_quant_storage={compute} "
                                    "(distributed=fsdp_qlora sets it to the compute dtype)"))
    return problems
