"""Run the benchmarks: every arm of every workload in a process of its own, alternated, repeated;
print the table and write the JSON.

    python -m benchmarks.run                                   # everything, 3 repetitions
    python -m benchmarks.run --workloads w1,w2 --reps 5 --steps 300
    python -m benchmarks.run --smoke                           # 1 step, tiny sizes, 1 rep, 1 thread
    python -m benchmarks.run --set w3.batch_size=1 --set w1.eval_blocks=128
    python -m benchmarks.run --workloads w6,w7 --reps 2       # the GPU workloads (benchmarks/device_w6_w7.sh)
    python -m benchmarks.run --workloads w9 --arms fsdp_today,fsdp_lowmem --reps 2  # some arms only

Per repetition and workload the arms run in a fixed alternation (W1: peak, ours, baseline;
W2: peak, ours, pad128, dynamic; W3: full, lora, qlora; W4: ours cold, ours cached, baseline
cold, baseline cached; W5: one process, two processes; W6: peak, ours, baseline; W7: lora, lora_plain,
qlora, qlora_plain; W8: small, large, large cached, stream; W9: lora, lora_plain, fsdp_today, fsdp_lowmem,
head_full, head_chunked, merge), so slow drifts of a shared machine hit every arm alike; ratios are
taken per repetition (paired) and their median reported with min and max.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import loadavg, offline_env, thread_env, write_json
from benchmarks.forkserver import ForkServer
from benchmarks.report import SUMMARISERS, format_report, mfu_summary, targets
from benchmarks.w9_sizes import TORCHRUN_ARMS as W9_TORCHRUN_ARMS

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9")
DEFAULT_WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w8")  # W6 and W7 are sized for a GPU, W9 takes ~15 GB: asked for by name

FULL = {
    "w1": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 512, "vocab_size": 8000, "block_size": 256,
           "batch_size": 8, "steps": 150, "warmup_steps": 5, "eval_blocks": 64},
    "w2": {"num_hidden_layers": 4, "num_attention_heads": 4, "hidden_size": 256, "intermediate_size": 1024,
           "max_position_embeddings": 512, "vocab_size": 8000, "batch_size": 16, "max_length": 128, "steps": 300,
           "warmup_steps": 5, "learning_rate": 3e-4},
    "w3": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 32000, "block_size": 256,
           "batch_size": 2, "steps": 3},
    "w4": {"block_size": 256},
    "w5": {"processes": 2, "threads_one": 2, "threads_two": 1},  # W1's sizes; 2 cores used either way
    "w6": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257, "block_size": 1024,
           "batch_size": 32, "steps": 110, "warmup_steps": 20, "eval_blocks": 32, "ours_overrides": [],
           "profile_steps": 3},  # torch.profiler over ours' last 3 steps of the first repetition (not timed)
    "w7": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768, "tokenizer_vocab": 8192,
           "batch_size": 32, "max_length": 256, "steps": 60, "warmup_steps": 10, "learning_rate": 2e-4, "lora_r": 16,
           "lora_alpha": 32, "gradient_checkpointing": True,
           "ours_overrides": ["objective.packing=true"],                 # padding-free batches
           "ours_overrides_cuda_lora": ["model.dtype=bfloat16"]},        # a frozen base in bf16, as the plain script loads it
    "w8": {"small_mb": 500, "large_mb": 2000, "num_proc": 2, "block_size": 1024, "stream_steps": 200, "stream_block_size": 256},
    "w9": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,  # Qwen2.5-0.5B
           "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768, "tokenizer_vocab": 8192,
           "head_layers": 2,                # (c): a 2-layer trunk of the same width and vocabulary
           "fsdp_block": 128, "fsdp_steps": 2,  # (b): 2 SGD steps of 1 x 128 tokens per rank
           "head_block": 1024,              # (c): one 1,024-token row per rank
           "lora_r": 16, "lora_alpha": 32, "merge_atol": None,  # None: the merge check's default for the dtype
           "sft": {"batch_size": 8, "max_length": 128, "steps": 3, "warmup_steps": 1, "learning_rate": 2e-4, "lora_r": 16,
                   "lora_alpha": 32, "gradient_checkpointing": True, "ours_overrides": ["objective.packing=true"],
                   "ours_overrides_cuda_lora": [], "plain_dtype": "auto"}},  # plain: transformers' default, the stored dtype
    "peak_min_time_s": 0.3, "peak_min_iters": 5,
}

SMOKE = {
    "w1": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 512, "block_size": 32,
           "batch_size": 4, "steps": 1, "warmup_steps": 0, "eval_blocks": 4},
    "w2": {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64,
           "max_position_embeddings": 128, "vocab_size": 512, "batch_size": 8, "max_length": 32, "steps": 1,
           "warmup_steps": 0, "learning_rate": 3e-4},
    "w3": {"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 64, "vocab_size": 1024, "block_size": 32,
           "batch_size": 2, "steps": 1},
    "w4": {"block_size": 32},
    "w5": {"processes": 2, "threads_one": 1, "threads_two": 1},
    "w6": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 4096, "block_size": 32,
           "batch_size": 2, "steps": 3, "warmup_steps": 1, "eval_blocks": 4, "ours_overrides": [], "profile_steps": 1},
    "w7": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 128, "tokenizer_vocab": 512,
           "batch_size": 4, "max_length": 192, "steps": 2, "warmup_steps": 1, "learning_rate": 2e-4, "lora_r": 4,
           "lora_alpha": 8, "gradient_checkpointing": True, "ours_overrides": ["objective.packing=true"],
           "ours_overrides_cuda_lora": ["model.dtype=bfloat16"]},
    "w8": {"small_mb": 1, "large_mb": 4, "num_proc": 2, "block_size": 64, "stream_steps": 6, "stream_block_size": 32},
    "w9": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 256, "tokenizer_vocab": 512,
           "head_layers": 1, "fsdp_block": 32, "fsdp_steps": 2, "head_block": 64, "lora_r": 4, "lora_alpha": 8,
           "merge_atol": None,
           "sft": {"batch_size": 4, "max_length": 96, "steps": 2, "warmup_steps": 1, "learning_rate": 2e-4, "lora_r": 4,
                   "lora_alpha": 8, "gradient_checkpointing": True, "ours_overrides": ["objective.packing=true"],
                   "ours_overrides_cuda_lora": [], "plain_dtype": "auto"}},
    "peak_min_time_s": 0.0, "peak_min_iters": 2,
}


def arm_plan(workload: str) -> list[tuple[str, str | None]]:
    """(arm, phase) in the order they alternate within one repetition."""
    if workload in ("w1", "w6"):
        return [("peak", None), ("ours", None), ("baseline", None)]
    if workload == "w7":
        return [("lora", None), ("lora_plain", None), ("qlora", None), ("qlora_plain", None)]
    if workload == "w2":
        return [("peak", None), ("ours", None), ("pad128", None), ("dynamic", None)]
    if workload == "w3":
        return [("full", None), ("lora", None), ("qlora", None)]
    if workload == "w5":
        return [("one", None), ("two", None)]
    if workload == "w8":
        return [("small", None), ("large", None), ("large_cached", None), ("stream", None)]
    if workload == "w9":
        return [(arm, None) for arm in ("lora", "lora_plain", "fsdp_today", "fsdp_lowmem", "head_full", "head_chunked", "merge")]
    return [("ours", "cold"), ("ours", "cached"), ("baseline", "cold"), ("baseline", "cached")]


def _apply_set(spec: dict[str, Any], assignment: str) -> None:
    key, _, raw = assignment.partition("=")
    if not raw:
        raise SystemExit(f"--set wants KEY=VALUE, got {assignment!r}")
    node = spec
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"--set: unknown key {key!r}")
    node[leaf] = json.loads(raw) if raw[0].isdigit() or raw[0] in "-[{" or raw in ("true", "false") else raw


def build_spec(args: argparse.Namespace, workdir: Path, threads: int) -> dict[str, Any]:
    spec = copy.deepcopy(SMOKE if args.smoke else FULL)
    if args.steps is not None:
        spec["w1"]["steps"] = spec["w2"]["steps"] = args.steps
    for assignment in args.set or []:
        _apply_set(spec, assignment)
    shared = os.environ.get("PTFT_HF_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    spec.update(smoke=args.smoke, threads=threads, seed=args.seed, workdir=str(workdir), shared_data=shared,
                workloads=list(args.workloads))
    return spec


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
        info["cpu_flags"] = sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma")))
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["memory_gb"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def _under_torchrun(cmd: list[str], processes: int, worker: list[str] | None) -> list[str]:
    """`cmd` (`python -m benchmarks.arms ...`) as torchrun's ranks: each rank starts `worker` (default
    `-m benchmarks.arms`, a fresh interpreter; `--torchrun-worker`) with the arm's arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            *(worker or cmd[1:3]), *cmd[3:]]


def run_process(workload: str, arm: str, phase: str | None, rep: int, spec_path: Path, workdir: Path, env: dict[str, str],
                timeout: int, cache_dir: Path | None = None, server: ForkServer | None = None,
                torchrun_worker: list[str] | None = None) -> dict[str, Any]:
    tag = f"{workload}_{arm}{'_' + phase if phase else ''}_{rep}"
    out = workdir / "out" / f"{tag}.json"
    log = workdir / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.arms", workload, arm, "--spec", str(spec_path), "--json-out", str(out),
           "--run-dir", str(workdir / "runs" / tag), "--rep", str(rep)]
    if workload == "w5":  # W5 sets its own threads per process; `two` runs under torchrun
        spec = json.loads(spec_path.read_text())["w5"]
        env = thread_env(env, spec["threads_two"] if arm == "two" else spec["threads_one"])
        if arm == "two":
            cmd = _under_torchrun(cmd, spec["processes"], torchrun_worker)
    if workload == "w9" and arm in W9_TORCHRUN_ARMS:  # two FSDP processes of one thread each
        env = thread_env(env, 1)
        cmd = _under_torchrun(cmd, 2, torchrun_worker)
    if phase:
        cmd += ["--phase", phase]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    before, started = loadavg(), time.time()
    forked = server is not None and cmd[1:3] == ["-m", "benchmarks.arms"]  # torchrun's arms start afresh
    if forked:
        log.write_text("")
        code = server.run(cmd[3:], env, log, timeout)
    else:
        with log.open("w", encoding="utf-8") as handle:
            try:
                code = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = -9
    result = json.loads(out.read_text()) if out.is_file() else {}
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        result.setdefault("error", f"exit status {code}")
        result["log_tail"] = tail
    return {"workload": workload, "arm": arm, "phase": phase, "rep": rep, "returncode": code, "log": str(log), "forked": forked,
            "process_wall_s": round(time.time() - started, 2), "loadavg_before": before, "loadavg_after": loadavg(),
            "result": result}


def _run_arms(args: argparse.Namespace, reps: int, spec: dict[str, Any], spec_path: Path, workdir: Path, env: dict[str, str],
              stamp: str, out_path: Path, server: ForkServer | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The set-up arm, then every arm of every workload in its alternation: (setup, runs)."""
    setup = run_process("setup", "setup", None, 0, spec_path, workdir, env, args.timeout, server=server)
    runs: list[dict[str, Any]] = []
    if setup["returncode"] != 0:
        print(f"set-up failed: {setup['result'].get('error')}\n{setup['result'].get('log_tail', '')}", file=sys.stderr)
    else:
        spec.update({k: v for k, v in setup["result"].items() if k not in ("workload", "arm", "loadavg_before", "loadavg_after", "wall_s")})
        write_json(spec_path, spec)
        for workload in args.workloads:
            for rep in range(reps):
                cache_dir = workdir / "w4_cache" / f"rep{rep}"
                for arm, phase in [(a, p) for a, p in arm_plan(workload) if not args.arms or a in args.arms]:
                    arm_cache = cache_dir / arm if phase else None
                    if workload == "w8" and arm == "stream":
                        arm_cache = None
                    elif workload == "w8":  # `large_cached` reuses the cache `large` filled in this repetition
                        arm_cache = workdir / "w8_cache" / f"rep{rep}" / ("small" if arm == "small" else "large")
                        phase_is_cold = arm != "large_cached"
                    else:
                        phase_is_cold = phase == "cold"
                    if phase_is_cold and arm_cache is not None and arm_cache.exists():
                        shutil.rmtree(arm_cache)
                    record = run_process(workload, arm, phase, rep, spec_path, workdir, env, args.timeout, arm_cache, server,
                                         shlex.split(args.torchrun_worker) if args.torchrun_worker else None)
                    runs.append(record)
                    # every arm's result on disk as it comes: a run stopped from outside keeps what finished
                    write_json(out_path, {"meta": {"stamp": stamp, "partial": True, "spec": spec}, "runs": runs})
                    label = f"{workload} {arm}{' ' + phase if phase else ''} rep {rep + 1}/{reps}"
                    status = "ok" if record["returncode"] == 0 else f"FAILED ({record['result'].get('error')})"
                    print(f"  {label}: {status}, {record['process_wall_s']} s, load {record['loadavg_before'][0]}"
                          f" -> {record['loadavg_after'][0]}", flush=True)
    return setup, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help="comma-separated subset of w1,...,w9 (default: all but the GPU-sized w6,w7 and the 0.5B w9)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="training steps of W1 and W2")
    parser.add_argument("--threads", type=int, default=None, help="threads per arm (default 2; 1 with --smoke)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 step, 1 repetition: checks the harness runs")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a size, e.g. w3.batch_size=1")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<stamp>.json)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the scratch folder (logs, checkpoints)")
    parser.add_argument("--arms", default=None,
                        help="comma-separated arms to run, the others left out (e.g. --workloads w9 --arms fsdp_today,fsdp_lowmem)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed to one arm")
    parser.add_argument("--fork", action=argparse.BooleanOptionalAction, default=None,
                        help="fork every arm from one process that imported the libraries once (benchmarks/forkserver.py; "
                             "default: on with --smoke, off otherwise: memory figures of forked arms are for smoke runs)")
    parser.add_argument("--torchrun-worker", default=None, metavar="COMMAND",
                        help="what torchrun starts per rank in place of `-m benchmarks.arms` (the arm's arguments follow), "
                             "e.g. a stand-in that forks the rank from a pre-imported server, as the test suite's smoke "
                             "run does (tests/forked_processes.py)")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {','.join(WORKLOADS)}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else []
    planned = {arm for w in args.workloads for arm, _ in arm_plan(w)}
    if set(args.arms) - planned:
        parser.error(f"unknown arms {sorted(set(args.arms) - planned)} for workloads {','.join(args.workloads)}; "
                     f"choose from {','.join(sorted(planned))}")
    reps = args.reps if args.reps is not None else (1 if args.smoke else 3)
    threads = args.threads if args.threads is not None else (1 if args.smoke else 2)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{stamp}.json"
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ptft-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = build_spec(args, workdir, threads)
    spec_path = workdir / "spec.json"
    write_json(spec_path, spec)
    env = offline_env(workdir, threads)
    started, load_start = time.time(), loadavg()
    print(f"benchmarks: workloads {','.join(args.workloads)}, {reps} rep(s), {threads} thread(s), work folder {workdir}",
          flush=True)

    fork = args.smoke if args.fork is None else args.fork
    server = ForkServer(env, REPO, workdir / "logs" / "forkserver.log", args.timeout) if fork else None
    try:
        setup, runs = _run_arms(args, reps, spec, spec_path, workdir, env, stamp, out_path, server)
    finally:
        if server is not None:
            server.close()
    summary = {w: SUMMARISERS[w](runs) for w in args.workloads if setup["returncode"] == 0}
    summary["mfu"] = mfu_summary(summary)
    target_rows = targets(summary) if setup["returncode"] == 0 else []
    errors = [{"workload": r["workload"], "arm": r["arm"], "phase": r["phase"], "rep": r["rep"],
               "error": r["result"].get("error"), "log": r["log"]} for r in [setup, *runs] if r["returncode"] != 0]
    loads = [r["loadavg_before"][0] for r in runs] + [r["loadavg_after"][0] for r in runs]
    meta = {"stamp": stamp, "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
            "machine": machine(), "smoke": args.smoke, "reps": reps, "threads": threads, "workloads": args.workloads,
            "spec": spec, "loadavg_start": load_start, "loadavg_end": loadavg(), "max_loadavg_1min": max(loads) if loads else None,
            "total_wall_s": round(time.time() - started, 1), "setup": setup["result"],
            "fork": fork, "preloaded": server.preloaded if server is not None else [],
            "torchrun_worker": args.torchrun_worker or "-m benchmarks.arms"}
    gpu = next((r["result"].get("env", {}).get("gpu") for r in runs if r["result"].get("env", {}).get("gpu")), None)
    if gpu:
        meta["machine"]["gpu"] = gpu
    payload = {"meta": meta, "summary": summary, "targets": target_rows, "errors": errors, "runs": runs}
    write_json(out_path, payload)
    if setup["returncode"] == 0:
        print()
        print(format_report(summary, target_rows, meta))
    for err in errors:
        print(f"FAILED {err['workload']} {err['arm']} rep {err['rep']}: {err['error']} (log: {err['log']})", file=sys.stderr)
    print(f"\nresults: {out_path} ({meta['total_wall_s']} s)")
    if not args.keep_workdir and not args.workdir and not errors:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
