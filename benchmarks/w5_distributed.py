"""W5, W1's pretraining on this machine's cores two ways: one process with 2 threads against two
processes of 1 thread each (DDP over gloo, started by torchrun), the same global batch.

one: `ours` of W1 (the project's code path) with W1's batch, `w5.threads_one` threads.
two: the same command under `torchrun --nproc_per_node w5.processes`, W1's batch split across the
     processes (per-device batch = batch / processes), `w5.threads_two` threads each.

Each step trains on the same rows, so tokens/s compare the two ways of using the cores; the
training losses should agree. Rank 0 times the steps (DDP keeps the ranks in step) and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import configure, environment, step_seconds, timed_window


def arm(spec: dict[str, Any], run_dir: Path, name: str) -> dict[str, Any] | None:
    from ptft_hf.distributed import is_main_process
    from benchmarks.w1_clm import ours_trainer

    s, w5 = spec["w1"], spec["w5"]
    processes = w5["processes"] if name == "two" else 1
    if s["batch_size"] % processes:
        raise ValueError(f"w1.batch_size={s['batch_size']} does not split over {processes} processes")
    device = configure(w5["threads_two"] if name == "two" else w5["threads_one"])
    trainer, prepared, timer, overrides, prep_s = ours_trainer(spec, run_dir, device, s["batch_size"] // processes)
    if trainer.args.world_size != processes:
        raise RuntimeError(f"arm {name} expects {processes} process(es), the trainer sees {trainer.args.world_size}")
    train_result = trainer.train()
    if not is_main_process():
        return None
    steps, seconds = timed_window(timer, s["warmup_steps"])
    per_step = sorted(step_seconds(timer, s["warmup_steps"]))
    tokens = steps * s["batch_size"] * s["block_size"]  # the global batch: every process's rows
    return {"processes": processes, "threads_per_process": w5["threads_two"] if name == "two" else w5["threads_one"],
            "per_device_batch": s["batch_size"] // processes, "timed_steps": steps, "timed_s": round(seconds, 4),
            "tokens_per_s": tokens / seconds, "step_s_median": per_step[len(per_step) // 2],
            "train_loss": float(train_result.training_loss), "prep_s": round(prep_s, 2), "device": device,
            "ddp_backend": trainer.accelerator.state.backend, "overrides": overrides, "env": environment()}
