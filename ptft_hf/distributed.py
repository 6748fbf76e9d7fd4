"""Runs launched on several processes (`torchrun`, `accelerate launch`): one run folder for all ranks.

Every rank runs the same Hydra command. What must agree before Hydra composes is the clock:
`${now:...}` in the default run folder (and in any override) is resolved by each process on its
own, so ranks that start a second apart would write into different folders. `agree_on_launch_time`
starts the process group early (accelerate's `PartialState`, the one the Trainer uses later),
takes rank 0's clock and makes Hydra's `now` resolver read it on every rank. `rank_overrides`
keeps the run folder rank 0's: other ranks write neither Hydra's `.hydra/` record nor its job log
there, only a log of their own (`<job>.rank<N>.log`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


def launched_rank_and_world() -> tuple[int, int]:
    """(global rank, world size) as the launcher set them in the environment; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def started_by_launcher() -> bool:
    """torchrun and `accelerate launch` set LOCAL_RANK for every process they start (one or more)."""
    return "LOCAL_RANK" in os.environ


def is_distributed_launch() -> bool:
    return launched_rank_and_world()[1] > 1


def _frozen_clock(moment: datetime.datetime) -> type:
    class SharedClock(datetime.datetime):
        """`datetime` whose now() is the launch time every rank agreed on."""

        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # noqa: D102
            return moment if tz is None else moment.astimezone(tz)

    return SharedClock


def agree_on_launch_time() -> datetime.datetime:
    """Rank 0's clock, on every rank; Hydra's `${now:...}` resolves with it from here on."""
    import hydra.core.utils as hydra_utils
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # initialises the process group from the launcher's environment (gloo on CPU)
    moment = [datetime.datetime.now() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(moment, src=0)
    hydra_utils.datetime = _frozen_clock(moment[0])  # the `now` resolver calls hydra.core.utils.datetime.now()
    return moment[0]


def rank_overrides(rank: int) -> list[str]:
    """Hydra overrides for a rank other than 0: no `.hydra/` record and no job log in the shared
    folder (rank 0 writes them); its log goes to a file of its own, nothing to the console."""
    if rank == 0:
        return []
    return ["hydra.output_subdir=null",
            f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/${{hydra.job.name}}.rank{rank}.log",
            "hydra.job_logging.root.handlers=[file]"]


def is_main_process() -> bool:
    """Global rank 0, or a plain run."""
    return launched_rank_and_world()[0] == 0


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (it fills the caches: datasets' map, builtin corpora); the
    other ranks run it after, reading what rank 0 wrote. A plain context in a one-process run."""
    if not is_distributed_launch():
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def wait_for_everyone() -> None:
    if is_distributed_launch():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def weights_are_sharded() -> bool:
    """True when a forward pass is a collective: FSDP or DeepSpeed on several processes gather
    each layer's weights from every rank, so every rank must run every forward (evaluation
    batches, generation) and every save; one rank alone would wait for the others for ever."""
    if not is_distributed_launch():
        return False
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    engine = AcceleratorState._shared_state.get("distributed_type")
    if engine == DistributedType.DEEPSPEED:  # ZeRO-1/2 partition only gradients and optimizer state
        return getattr(AcceleratorState().deepspeed_plugin, "zero_stage", None) == 3
    return engine == DistributedType.FSDP


def record_error_for_launcher(text: str) -> None:
    """Write `text` as this worker's torchelastic error file (TORCHELASTIC_ERROR_FILE, set by torchrun
    for each worker): the launcher's failure summary shows it as the worker's error."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            # torchelastic's own layout (ErrorHandler.record_exception), with the lines in place of a traceback
            json.dump({"message": {"message": text, "extraInfo": {"py_callstack": text,
                                                                  "timestamp": str(int(time.time()))}}}, f)
    except OSError as err:  # the summary then says "To enable traceback see ..." as before
        log.debug("could not write the launcher's error file %s: %s", path, err)


def release_process_group() -> None:
    """Destroy the process group, if one was started, before the interpreter exits: left to
    the exit-time destructors, gloo's threads can still be joinable, and the process dies with
    "terminate called without an active exception" (SIGABRT) after a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
