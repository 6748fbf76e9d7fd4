"""One arm of one workload, in a process of its own (the orchestrator, benchmarks.run, starts these).

    python -m benchmarks.arms w1 ours --spec WORK/spec.json --json-out WORK/out/w1_ours_0.json

Arms: setup (once, before the rest); w1: peak, ours, baseline; w2: peak, ours, pad128, dynamic;
w3: full, lora, qlora; w4: ours, baseline (with --phase cold|cached and --cache-dir); w5: one, two
(`two` under torchrun: rank 0 writes the JSON); w6: peak, ours, baseline (W1's arms at GPT-2 124M's
shape); w7: lora, lora_plain, qlora, qlora_plain; w8: small, large, large_cached, stream; w9: lora, lora_plain,
fsdp_today, fsdp_lowmem, head_full, head_chunked (the last four under torchrun), merge.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import load_spec, loadavg, write_json

ARMS = {
    "setup": ("setup",),
    "w1": ("peak", "ours", "baseline"),
    "w2": ("peak", "ours", "pad128", "dynamic"),
    "w3": ("full", "lora", "qlora"),
    "w4": ("ours", "baseline"),
    "w5": ("one", "two"),
    "w6": ("peak", "ours", "baseline"),
    "w7": ("lora", "lora_plain", "qlora", "qlora_plain"),
    "w8": ("small", "large", "large_cached", "stream"),
    "w9": ("lora", "lora_plain", "fsdp_today", "fsdp_lowmem", "head_full", "head_chunked", "merge"),
}
STARTED = time.time()  # the arm process's start, before its heavy imports (W9 times loading from here)


def run_arm(workload: str, arm: str, spec: dict, run_dir: Path, phase: str | None, cache_dir: str | None) -> dict:
    if workload == "setup":
        from benchmarks.prepare import setup_arm

        return setup_arm(spec)
    if arm == "peak":
        from benchmarks.mfu import peak_arm

        return peak_arm(spec, workload)
    if workload in ("w1", "w6"):
        from benchmarks import w1_clm

        return getattr(w1_clm, arm)(spec, run_dir, workload)
    if workload == "w7":
        from benchmarks.w7_sft import sft_arm

        return sft_arm(spec, run_dir, arm)
    if workload == "w2":
        from benchmarks import w2_classification

        return getattr(w2_classification, arm)(spec, run_dir)
    if workload == "w3":
        from benchmarks.w3_memory import memory_arm

        return memory_arm(spec, run_dir, arm)
    if workload == "w4":
        from benchmarks.w4_data import data_arm

        return data_arm(spec, run_dir, arm, phase or "cold", cache_dir or str(run_dir / "cache"))
    if workload == "w5":
        from benchmarks.w5_distributed import arm as distributed_arm

        return distributed_arm(spec, run_dir, arm)
    if workload == "w9":
        from benchmarks.w9_sizes import w9_arm

        return w9_arm(spec, run_dir, arm, STARTED)
    if workload == "w8":
        from benchmarks.w8_corpus import corpus_arm, stream_arm

        return stream_arm(spec, run_dir) if arm == "stream" else corpus_arm(spec, arm, Path(cache_dir or run_dir / "cache"))
    raise ValueError(f"unknown workload {workload}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(ARMS))
    parser.add_argument("arm")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--run-dir", help="scratch folder of this arm (Trainer output_dir)")
    parser.add_argument("--phase", choices=["cold", "cached"])
    parser.add_argument("--cache-dir")
    parser.add_argument("--rep", type=int, default=0, help="which repetition (W6 profiles the first only)")
    args = parser.parse_args(argv)
    if args.arm not in ARMS[args.workload]:
        parser.error(f"{args.workload} has arms {', '.join(ARMS[args.workload])}")
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s] %(message)s")
    spec = load_spec(args.spec)
    spec["rep"] = args.rep
    run_dir = Path(args.run_dir or Path(spec["workdir"]) / "runs" / f"{args.workload}_{args.arm}")
    run_dir.mkdir(parents=True, exist_ok=True)
    before, started = loadavg(), time.time()
    try:
        result = run_arm(args.workload, args.arm, spec, run_dir, args.phase, args.cache_dir)
        status = 0
    except Exception as err:  # reported in the JSON; the orchestrator shows it and fails the run
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        status = 1
    finally:
        from ptft_hf.distributed import release_process_group

        release_process_group()  # several-process arms (W5): before exit, not in exit-time destructors
    if result is None:  # a rank other than 0 of a several-process arm: rank 0 reports
        # and leaves without the interpreter's exit-time destructors: under load, rank 1 of W5 died in
        # them ("terminate called without an active exception", SIGABRT) even after the process
        # group was destroyed, failing a finished arm
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    rank = int(os.environ.get("RANK", "0"))
    json_out = args.json_out if rank == 0 else f"{args.json_out}.rank{rank}"  # a failing rank > 0: its own file
    result.update(workload=args.workload, arm=args.arm, loadavg_before=before, loadavg_after=loadavg(),
                  wall_s=round(time.time() - started, 2))
    write_json(json_out, result)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
