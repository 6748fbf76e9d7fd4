"""Saving a trained model into the run folder: through a staging folder, with its stop tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ptft_hf.training.trainer import PtftTrainer


def save_model(trainer: PtftTrainer, tokenizer: Any, model_dir: Path, head_config: bool = False) -> None:
    """Save into `model.partial/`, then rename: `model/` is never half-written. Every rank calls
    this (under FSDP or ZeRO-3 the full weights are gathered from all of them); rank 0 writes.
    `head_config` (classifiers): an adapter folder gets `label_maps.json` too (num_labels, id2label,
    label2id): the head trained beside the adapter loads back (and merges) only onto a base built with
    them. Not config.json: transformers takes a folder with one for a full model."""
    staging = model_dir.with_name(model_dir.name + ".partial")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_final_model(str(staging))
    if not main:
        return
    tokenizer.save_pretrained(str(staging))
    _save_stop_tokens(trainer.model, tokenizer, staging)
    if head_config and (staging / "adapter_config.json").is_file():
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        save_label_maps(base.config, staging)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
    if model_dir.exists():  # from an attempt that died before writing metrics.json
        shutil.rmtree(model_dir)
    staging.rename(model_dir)


LABEL_MAPS = "label_maps.json"


def save_label_maps(config: Any, folder: Path) -> None:
    """A classifier's label count and names, beside its adapter (`read_label_maps` gives them back)."""
    maps = {"num_labels": config.num_labels, "id2label": {str(i): label for i, label in config.id2label.items()},
            "label2id": dict(config.label2id)}
    (folder / LABEL_MAPS).write_text(json.dumps(maps, indent=2) + "\n", encoding="utf-8")


def read_label_maps(folder: Path) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that build a base's head for the adapter in `folder`
    (num_labels, id2label, label2id); empty when the folder has no label maps."""
    path = Path(folder) / LABEL_MAPS
    if not path.is_file():
        return {}
    maps = json.loads(path.read_text(encoding="utf-8"))
    return {"num_labels": maps["num_labels"], "id2label": {int(i): label for i, label in maps["id2label"].items()},
            "label2id": maps["label2id"]}


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
