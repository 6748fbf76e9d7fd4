"""What a run cost: estimated training FLOPs and peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def estimate_training_flops(params: dict[str, float], tokens: int, passes: int = 1) -> float:
    """Dense-transformer estimate: forward 2N, backward 2N for activations plus 2N_trainable for
    weight gradients per token (6N for full training, about 4N for a frozen base with adapters).
    The attention term is left out (small for short blocks). `passes`: how many times each batch
    goes through the model (2 under R-Drop)."""
    total, trainable = params["parameters"], params["trainable_parameters"]
    return float(passes * tokens * (4 * total + 2 * trainable))


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's allocator statistics, and on Linux the resident high-water mark
    (writing 5 to /proc/self/clear_refs), so each stage of a pipeline reports its own peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the process-wide peak is reported instead


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch when on CUDA, else the peak resident memory since the
    last `reset_peak_memory` (Linux VmHWM), else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux
