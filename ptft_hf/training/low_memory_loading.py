"""FSDP's low-memory loading (`fsdp_config.cpu_ram_efficient_loading`, on in `distributed=fsdp`):
no rank holds the whole model while it is sharded. Which way a run loads is decided here, once,
before its model loads, and logged in one line:

- full fine-tuning from a checkpoint (`SHARDS`): every rank builds the model on the meta device;
  when the Trainer exists, accelerate shards it as it would for training and each rank reads only
  its own slices of the safetensors file(s) into its shards (torch.distributed.checkpoint,
  `models.sharded_loading`). The model is sharded before the evaluation before training, which
  runs on every rank as under any sharded engine. A checkpoint that cannot be read slice by slice
  (names or shapes transformers would have to change, a vocabulary the tokenizer outgrows, no
  safetensors) falls back to the next way, logged with the reason by `models.loading`.
- LoRA / DoRA (peft wraps the model before it is sharded), and the fallback above (`RANK_0`):
  rank 0 alone reads the checkpoint; the other ranks build the model empty, and accelerate sends
  each its shards from rank 0 when it shards the model (`fsdp2_load_full_state_dict`). Until then
  the weights exist on rank 0 alone: the evaluation before training runs there
  (`PtftTrainer._weights_on_rank_0_only`).
- a classifier (the Trainer's stock evaluation loop needs the weights on every rank before
  training) and a 4-bit base: every rank reads the whole checkpoint.

`accelerate launch` turns the rank-0 way on through the environment (ACCELERATE_USE_FSDP,
FSDP_CPU_RAM_EFFICIENT_LOADING), which transformers reads (`is_fsdp_enabled`); torchrun sets
neither, so a run sets them here from the config it was given.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from ptft_hf.distributed import is_distributed_launch

log = logging.getLogger(__name__)

SHARDS = "shards"  # every rank reads its own slices of the checkpoint
RANK_0 = "rank_0"  # rank 0 reads it and accelerate broadcasts the shards
_mode: str | None = None


def wants_low_memory_loading(trainer: Mapping[str, Any]) -> bool:
    """The trainer fields ask for FSDP with `cpu_ram_efficient_loading`."""
    config = trainer.get("fsdp_config") or {}
    return bool(trainer.get("fsdp")) and str(config.get("cpu_ram_efficient_loading", False)).lower() == "true"


def loading_mode() -> str | None:
    """SHARDS, RANK_0, or None (every rank loads the whole checkpoint) while the run's model loads."""
    return _mode


@contextmanager
def low_memory_loading(trainer: Mapping[str, Any], classifies: bool, adapter: bool = False,
                       checkpoint: bool = True) -> Iterator[str | None]:
    """`announce_low_memory_loading` for the run's own model, loaded inside: models loaded after it
    (the trained model read back to check a staged folder, on rank 0) load whole, as they always did."""
    global _mode
    try:
        yield announce_low_memory_loading(trainer, classifies, adapter, checkpoint)
    finally:
        _mode = None


def announce_low_memory_loading(trainer: Mapping[str, Any], classifies: bool, adapter: bool = False,
                                checkpoint: bool = True) -> str | None:
    """Decide how this run loads under FSDP when the config asks for low-memory loading and several
    processes run, set the switches for this process, and log it; returns the mode (see the module
    docstring). `adapter`: the strategy trains a peft adapter (LoRA, DoRA, QLoRA); `checkpoint`: the
    model is read from one (false: built from its config, or a `random_init` control)."""
    global _mode
    _mode = None
    if not (wants_low_memory_loading(trainer) and is_distributed_launch()):
        return None
    if classifies:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        log.info("FSDP low-memory loading off: this objective's evaluation before training needs the weights on every rank")
        return None
    os.environ["ACCELERATE_USE_FSDP"] = "true"  # the rank-0 way, and the fallback of the slice-reading one
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    fsdp2 = int((trainer.get("fsdp_config") or {}).get("version", 2)) == 2  # transformers 5's default: 2
    if not checkpoint:  # every rank builds it; accelerate's broadcast gives all rank 0's initial weights
        _mode = RANK_0
        log.info("FSDP low-memory loading: no checkpoint to read (the model is built from its config); "
                 "every rank starts from rank 0's initial weights, sent when FSDP shards the model")
    elif adapter or not fsdp2:
        _mode = RANK_0
        log.info("FSDP low-memory loading: rank 0 reads the checkpoint, the other ranks receive their shards from it "
                 "(%s; a 4-bit base is read by every rank)",
                 "peft wraps the model before it is sharded" if adapter else "slices are read into FSDP2's shards, this is FSDP1")
    else:
        _mode = SHARDS
        log.info("FSDP low-memory loading: every rank reads its own slices of the checkpoint into its shards")
    return _mode
