"""FSDP on CPU processes (gloo): what accelerate leaves out.

accelerate's `AcceleratorState` turns a `fsdp_plugin` on only for GPU-like distributed types
(MULTI_GPU, MULTI_XPU, ...); on CPU processes (MULTI_CPU) it drops the plugin without a word and
the run trains as plain DDP. torch's FSDP2 (`fully_shard`) itself runs on CPU over gloo, so while
the accelerator state is built the CPU processes are presented as GPU-like; the device stays CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def fsdp_on_cpu(args: Any) -> Iterator[None]:
    if getattr(args, "fsdp_plugin_args", None) is None:
        yield
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    if shared.get("distributed_type") != DistributedType.MULTI_CPU:
        yield
        return
    shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shared.get("distributed_type") == DistributedType.MULTI_GPU:  # accelerate did not take FSDP
            shared["distributed_type"] = DistributedType.MULTI_CPU
