"""Engine combinations refused before anything runs (the `distributed` group and the trainer's
fsdp/deepspeed fields), each with the field to change and how."""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig

from ptft_hf.distributed import launched_rank_and_world
from ptft_hf.errors import Problem

LAUNCH_FIX = "launch with `torchrun --nproc_per_node N -m ptft_hf ...` (N >= 2), or drop distributed= for one process"


def _engine_field(cfg: DictConfig, trainer_field: str) -> str:
    """Name the preset when one set the field, else the trainer field itself."""
    name = cfg.get("distributed", {}).get("name", "none")
    return f"distributed={name}" if name not in (None, "none", "ddp") else f"trainer.{trainer_field}"


def _deepspeed_stage(path: Any) -> int | None:
    import json

    if isinstance(path, dict):
        return path.get("zero_optimization", {}).get("stage")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError):
        return None  # TrainingArguments reports a missing or broken file itself


def distributed_problems(cfg: DictConfig) -> list[Problem]:
    trainer, strategy = cfg.trainer, cfg.strategy
    fsdp, deepspeed = bool(trainer.get("fsdp")), trainer.get("deepspeed")
    world = launched_rank_and_world()[1]
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
    sharded = fsdp or (deepspeed and _deepspeed_stage(deepspeed) == 3)
    if sharded:
        field = _engine_field(cfg, "fsdp" if fsdp else "deepspeed")
        if world < 2:
            problems.append(Problem(field, "shards the model across processes, but this run has one process", LAUNCH_FIX))
        if cfg.get("hub") is not None and cfg.hub.merged and (cfg.hub.push or cfg.hub.dry_run):
            problems.append(Problem("hub.merged", "merging needs the whole base model in one process, but its weights "
                                    "are sharded", "drop hub.merged, then run `ptft-hf-push RUN_DIR --merged` on one process"))
    if fsdp and strategy.name == "qlora" and strategy.quantization:
        compute = strategy.quantization.get("bnb_4bit_compute_dtype") or "float32"
        storage = strategy.quantization.get("bnb_4bit_quant_storage") or "uint8"
        if str(storage) != str(compute):
            problems.append(Problem("strategy.quantization.bnb_4bit_quant_storage",
                                    f"is {storage}, but FSDP shards only floating-point storage equal to the compute "
                                    f"dtype ({compute}); it would fail with \"cannot flatten integer dtype tensors\"",
                                    "use distributed=fsdp_qlora (it sets the storage to the compute dtype)"))
    return problems
