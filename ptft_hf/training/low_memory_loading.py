"""FSDP's low-memory loading (`fsdp_config.cpu_ram_efficient_loading`, on in `distributed=fsdp`):
rank 0 alone reads the checkpoint; the other ranks build the model empty, and accelerate sends
each its shards from rank 0 when it shards the model (`fsdp2_load_full_state_dict`).

`accelerate launch` turns this on through the environment (ACCELERATE_USE_FSDP,
FSDP_CPU_RAM_EFFICIENT_LOADING), which transformers reads (`is_fsdp_enabled`); torchrun sets
neither, so a run sets them here, before its model loads, from the config it was given. Until
`train` shards the model the weights exist on rank 0 alone: the evaluation before training runs
there (`PtftTrainer._weights_on_rank_0_only`). Objectives evaluated by the Trainer's stock loop
(classifiers) keep every rank loading the whole checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ptft_hf.distributed import is_distributed_launch

log = logging.getLogger(__name__)


def wants_low_memory_loading(trainer: Mapping[str, Any]) -> bool:
    """The trainer fields ask for FSDP with `cpu_ram_efficient_loading`."""
    config = trainer.get("fsdp_config") or {}
    return bool(trainer.get("fsdp")) and str(config.get("cpu_ram_efficient_loading", False)).lower() == "true"


def announce_low_memory_loading(trainer: Mapping[str, Any], classifies: bool) -> bool:
    """Set the switch for this process when the config asks for it, several processes run and the
    objective's evaluation is the project's own loop (not a classifier's); returns whether it is on."""
    if not (wants_low_memory_loading(trainer) and is_distributed_launch()):
        return False
    if classifies:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        log.info("FSDP low-memory loading off: this objective's evaluation before training needs the weights on every rank")
        return False
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    log.info("FSDP low-memory loading: rank 0 reads the checkpoint, the other ranks receive their shards from it")
    return True
