"""Saving a trained model into the run folder: through a staging folder, with its stop tokens."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ptft_hf.training.trainer import PtftTrainer


def save_model(trainer: PtftTrainer, tokenizer: Any, model_dir: Path) -> None:
    """Save into `model.partial/`, then rename: `model/` is never half-written. Every rank calls
    this (under FSDP or ZeRO-3 the full weights are gathered from all of them); rank 0 writes."""
    staging = model_dir.with_name(model_dir.name + ".partial")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_final_model(str(staging))
    if not main:
        return
    tokenizer.save_pretrained(str(staging))
    _save_stop_tokens(trainer.model, tokenizer, staging)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
    if model_dir.exists():  # from an attempt that died before writing metrics.json
        shutil.rmtree(model_dir)
    staging.rename(model_dir)


def _save_stop_tokens(model: Any, tokenizer: Any, folder: Path) -> None:
    """An adapter's folder has no generation_config.json (the base model's is loaded with it);
    when SFT made the end-of-turn token a stop token as well as EOS, it is written there, so the
    adapter stops at the end of its turn (`ptft_hf.api` and `GenerationConfig.from_pretrained` read it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if (folder / "generation_config.json").exists() or config is None:
        return
    if isinstance(config.eos_token_id, list) and config.eos_token_id != [tokenizer.eos_token_id]:
        config.save_pretrained(folder)
