"""W3, peak memory of fine-tuning steps of a GPT-2 (built from a config, >= 100M parameters in the
full run) with the project's full, LoRA and QLoRA strategies, each in its own process.

Each arm imports everything it will use (torch, transformers, peft, bitsandbytes, datasets and the
project), reads its resident size (the post-import baseline), resets the kernel's high-water mark
(/proc/self/clear_refs), then loads the checkpoint saved by the set-up arm through the project's
own path (model=pretrained, strategy=<arm>, objective=clm: compose -> prepare -> build_trainer)
and trains `steps` optimiser steps (3 in the full run: full fine-tuning's first step has no Adam
state yet while its activations are alive, so its peak comes from the second step on). Reported:

- growth_mb: VmHWM at the end minus VmRSS after imports: the peak resident memory the steps needed,
  counting every resident page, file-backed ones included (growth_step1_mb: the same after step 1);
- anon_growth_mb: the sampled peak of RssAnon minus RssAnon after imports: the memory the process
  had to own. A memory-mapped safetensors file that is read (QLoRA quantises every weight while
  loading) stays resident as file pages while mapped, which VmHWM counts and the kernel can drop;
- on CUDA, cuda_peak_mb: torch.cuda.max_memory_allocated (where the fine-tuning memory lives).

Checkpoint loading: the set-up arm built the fp32 model and saved it, so no arm pays for
building it; full and LoRA load fp32 weights, QLoRA loads them straight into 4-bit NF4 (never
holding the whole fp32 model), as a user fine-tuning a downloaded checkpoint would.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from benchmarks.common import AnonSampler, configure, environment, proc_status, reset_peak


def _memory_callback():
    from transformers import TrainerCallback

    class MemoryMarks(TrainerCallback):
        """Resident memory when training starts (model, data, trainer built) and after each step."""

        def __init__(self) -> None:
            self.marks: list[dict[str, Any]] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
            self.marks.append({"at": "train_begin", "t": time.perf_counter(), **proc_status()})

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
            self.marks.append({"at": f"step_{state.global_step}", "t": time.perf_counter(), **proc_status()})

    return MemoryMarks()


def memory_arm(spec: dict[str, Any], run_dir: Path, strategy_name: str) -> dict[str, Any]:
    device = configure(spec["threads"])
    # every import the arm needs happens before the baseline reading
    import importlib

    import torch
    for name in ("bitsandbytes", "datasets", "peft", "transformers"):
        importlib.import_module(name)
    from omegaconf import OmegaConf
    from transformers import set_seed

    from ptft_hf.api import compose
    from ptft_hf.data.sources import load_text_splits
    from ptft_hf.models.loading import count_parameters, load_tokenizer
    from ptft_hf.objectives import OBJECTIVES
    from ptft_hf.recipe import build_trainer
    from ptft_hf.strategies import get_strategy

    s = spec["w3"]
    overrides = [
        "model=pretrained", f"model.name_or_path={spec['w3_model_dir']}",
        "data=text_files", f"data.path={spec['files']['w3_text']}",
        "objective=clm", f"objective.block_size={s['block_size']}", f"strategy={strategy_name}",
        *(["trainer=gpu", "strategy.quantization.bnb_4bit_compute_dtype=bfloat16"] if device == "cuda" and strategy_name == "qlora"
          else ["trainer=gpu"] if device == "cuda" else []),
        f"trainer.per_device_train_batch_size={s['batch_size']}", f"trainer.max_steps={s['steps']}",
        "trainer.eval_strategy=no", "trainer.save_strategy=no", "trainer.disable_tqdm=true",
        "trainer.logging_steps=1", "trainer.dataloader_num_workers=0", f"seed={spec['seed']}",
    ]
    cfg = compose(*overrides).cfg  # composing is part of the set-up, not of the measured step
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = proc_status()
    reset = reset_peak()
    sampler = AnonSampler()
    sampler.start()
    started = time.perf_counter()
    conf = OmegaConf.to_object(cfg)
    set_seed(conf.seed)
    splits = load_text_splits(conf.data, conf.seed)
    tokenizer = load_tokenizer(conf.model)
    strategy = get_strategy(conf.strategy)
    prepared = OBJECTIVES[conf.objective.name](conf, splits, tokenizer, strategy, {})
    marks = _memory_callback()
    trainer = build_trainer(conf, run_dir, tokenizer, prepared, [marks])
    train_result = trainer.train()
    seconds = time.perf_counter() - started
    anon_peak = sampler.stop()
    end = proc_status()
    params = count_parameters(prepared.model)
    result = {
        "strategy": strategy_name, "device": device, "hwm_reset": reset,
        "baseline": baseline, "end": end, "marks": marks.marks,
        "growth_mb": round(end.get("VmHWM", 0.0) - baseline.get("VmRSS", 0.0), 1),
        # the first step has no optimiser state yet while activations are alive: a lower peak
        "growth_step1_mb": next((round(m["VmHWM"] - baseline.get("VmRSS", 0.0), 1) for m in marks.marks
                                 if m["at"] == "step_1"), None),
        "anon_growth_mb": round(anon_peak - baseline.get("RssAnon", 0.0), 1),
        "peak_rss_mb": end.get("VmHWM"), "train_loss": float(train_result.training_loss),
        "seconds": round(seconds, 2), "step_s": [round(b["t"] - a["t"], 3) for a, b in zip(marks.marks, marks.marks[1:])],
        "last_step_s": round(marks.marks[-1]["t"] - marks.marks[-2]["t"], 3) if len(marks.marks) > 2 else None,
        **params, "checkpoint_parameters": spec.get("w3_parameters"),
        "overrides": overrides, "env": environment(),
    }
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result
