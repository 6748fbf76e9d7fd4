"""`trainer.bf16: auto`: bfloat16 autocast where the hardware runs it natively and faster, fp32 elsewhere.

On a CPU with native bf16 (AVX-512 BF16 or AMX) a bf16 matmul runs a few times faster than fp32
(this project's 2-core AMD EPYC machines: about 2.5x per training step of a 4x256 GPT-2); on a CPU
without it (AVX2 only) torch emulates bf16 at a small fraction of the fp32 rate, a trap. So `auto`
asks the CPU's flags first and then times one GEMM both ways, and keeps fp32 unless bf16 measured
faster. On CUDA, `auto` is `torch.cuda.is_bf16_supported()` (Ampere or newer).

Autocast keeps the weights and the optimiser state in fp32; only the matmuls (and what autocast
lists with them) run in bf16.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names
MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this much at the probe shape: noise and casts eat less than that
PROBE_SHAPE = (1024, 256, 1024)  # m, k, n: tokens x width x 4*width of a small model's MLP


@dataclass(frozen=True)
class PrecisionChoice:
    """What `bf16: auto` resolved to, and why (one line for the run log)."""

    bf16: bool
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_cpu_precision(flags: Iterable[str], speedup: float | None, min_speedup: float = MIN_SPEEDUP) -> PrecisionChoice:
    """bf16 autocast only with native bf16 instructions and a probe GEMM `min_speedup` x faster
    than fp32; `speedup` is fp32 seconds / bf16 seconds (None: not measured)."""
    native = sorted(set(flags) & set(NATIVE_BF16_FLAGS))
    if not native:
        return PrecisionChoice(False, "fp32: this CPU has no native bf16 (no AVX-512 BF16 or AMX), so bf16 would be "
                                      "emulated, many times slower")
    if speedup is None:
        return PrecisionChoice(False, f"fp32: this CPU has {', '.join(native)} but the bf16 probe could not run")
    m, k, n = PROBE_SHAPE
    measured = f"a {m}x{k}x{n} bf16 GEMM ran {speedup:.2f}x the fp32 rate here"
    if speedup < min_speedup:
        return PrecisionChoice(False, f"fp32: this CPU has {', '.join(native)} but {measured} (bf16 needs {min_speedup}x)")
    return PrecisionChoice(True, f"bf16 autocast: this CPU has {', '.join(native)} and {measured}")


def _seconds(a: Any, b: Any) -> float:
    import torch

    started = time.perf_counter()
    torch.matmul(a, b)
    return time.perf_counter() - started


def measure_cpu_bf16_speedup(shape: tuple[int, int, int] = PROBE_SHAPE, iters: int = 7) -> float:
    """fp32 seconds / bf16 seconds of one CPU matmul at `shape` (about 0.1 s on 2 cores).

    The two are timed in alternation and the fastest of each kept: a busy machine (another process
    on the sibling hyperthread) slows both alike and only ever adds time, so the ratio of the minima
    is what the hardware does, and the same from one run to the next (a resumed run and the run it
    is compared with must choose alike)."""
    import torch

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    _seconds(a, b), _seconds(a16, b16)  # warm-up: the kernel choice and first-touch of the outputs
    fp32, bf16 = [], []
    for _ in range(iters):
        fp32.append(_seconds(a, b))
        bf16.append(_seconds(a16, b16))
    return min(fp32) / max(min(bf16), 1e-12)


@functools.lru_cache(maxsize=None)
def _cpu_choice() -> PrecisionChoice:
    flags = cpu_flags()
    speedup = None
    if set(flags) & set(NATIVE_BF16_FLAGS):
        try:
            speedup = measure_cpu_bf16_speedup()
        except Exception as err:  # a torch build without CPU bf16 matmul: fp32, and the log says so
            log.debug("bf16 probe failed: %s", err)
    return choose_cpu_precision(flags, speedup)


def _cuda_choice() -> PrecisionChoice:
    import torch

    if torch.cuda.is_bf16_supported():
        return PrecisionChoice(True, f"bf16 autocast: {torch.cuda.get_device_name(0)} supports bf16")
    return PrecisionChoice(False, f"fp32: {torch.cuda.get_device_name(0)} has no bf16 (older than Ampere); "
                                  "trainer.fp16=true for fp16 mixed precision")


def resolve_auto_bf16(use_cpu: bool) -> PrecisionChoice:
    """What `bf16: auto` means on the device the run trains on (CPU results are cached per process)."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        return _cpu_choice()
    return _cuda_choice()


def resolve_trainer_precision(trainer: Mapping[str, Any]) -> tuple[dict[str, Any], PrecisionChoice | None]:
    """The trainer fields with `bf16: auto` replaced by true or false, and the choice made (None when
    bf16 was not `auto`). fp16 set to true wins over `auto` (bf16 off)."""
    fields = dict(trainer)
    if str(fields.get("bf16")).lower() != "auto":
        return fields, None
    if fields.get("fp16"):
        choice = PrecisionChoice(False, "fp16: trainer.fp16=true")
    else:
        choice = resolve_auto_bf16(bool(fields.get("use_cpu")))
    fields["bf16"] = choice.bf16
    return fields, choice


def recorded_bf16(checkpoint: Path | None) -> bool | None:
    """Whether the run that wrote `checkpoint` trained in bf16, as its `PrecisionRecord` saved it in
    `trainer_state.json`; None for no checkpoint, or one written before the record existed."""
    state_file = Path(checkpoint) / "trainer_state.json" if checkpoint else None
    if state_file is None or not state_file.is_file():
        return None
    stored = (json.loads(state_file.read_text(encoding="utf-8")).get("stateful_callbacks") or {}).get("PrecisionRecord")
    stored = stored[0] if isinstance(stored, list) and stored else stored
    return (stored or {}).get("args", {}).get("bf16")


def resume_precision(trainer: Mapping[str, Any], checkpoint: Path | None) -> tuple[dict[str, Any], PrecisionChoice | None]:
    """`resolve_trainer_precision`, except that a run resumed from a checkpoint keeps the precision
    the checkpoint was trained in: the probe, timed again on a busy machine, could decide otherwise
    and the resumed weights would not be the uninterrupted run's."""
    recorded = recorded_bf16(checkpoint) if str(dict(trainer).get("bf16")).lower() == "auto" else None
    if recorded is None:
        return resolve_trainer_precision(trainer)
    fields = {**dict(trainer), "bf16": bool(recorded)}
    return fields, PrecisionChoice(bool(recorded), f"{'bf16 autocast' if recorded else 'fp32'}: as {Path(checkpoint).name} "
                                                   "was trained (a resumed run keeps its precision)")
