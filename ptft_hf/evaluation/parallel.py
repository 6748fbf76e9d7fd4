"""BLiMP's paradigms scored in forked processes, a share each, then put together with lm-eval's own
group functions.

On a CPU, a small model's pass over BLiMP's 134k sentences is bound by lm-eval's per-request loop
and by small matrix products, neither of which a second intra-op thread speeds up much; a second
process on the second core does (the model's weights are shared copy-on-write, nothing is copied).
Each process runs lm-eval's `simple_evaluate` on its paradigms, as one process would run them all,
with the short-sentence kernels and shared prefixes the runner sets in it (`short_sentences.py`,
`shared_prefixes.py`): the scores agree with one process's to rounding (a test finds them equal on
a tiny float32 model); in bfloat16 a close pair can fall either way.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ptft_hf.evaluation.task_files import BLIMP_PREFIX, blimp_paradigms

log = logging.getLogger(__name__)
BLIMP_GROUP = "blimp"


def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def paradigm_tasks(tasks: list[str], data_root: Path) -> list[str]:
    """The BLiMP paradigm tasks among `tasks` (the `blimp` group expanded), in order, once each."""
    out: list[str] = []
    for task in tasks:
        names = [BLIMP_PREFIX + p for p in blimp_paradigms(data_root)] if task == BLIMP_GROUP else \
            [task] if task.startswith(BLIMP_PREFIX) else []
        out += [n for n in names if n not in out]
    return out


# A sentence costs lm-eval's per-request work besides the model's, worth about 25 characters of model
# work (measured: round-robin shares of 3.34M and 2.89M characters, 68k and 66k sentences, took 120 and 108 s of CPU)
SENTENCE_OVERHEAD_CHARS = 25


def paradigm_weights(paradigms: list[str], data_root: Path, limit: int | float | None = None) -> dict[str, int]:
    """Each BLiMP paradigm task's expected scoring work: its sentences' characters plus a per-sentence
    overhead (both sentences of every pair are scored); with an integer `limit`, of the first
    `limit` pairs only, the ones lm-eval scores."""
    pairs = limit if isinstance(limit, int) and limit > 0 else None
    weights = {}
    for task in paradigms:
        path = data_root / "eval/blimp/data" / f"{task[len(BLIMP_PREFIX):]}.jsonl"
        total = 0
        with path.open(encoding="utf-8") as handle:
            lines = (line for line in handle if line.strip())
            for line in itertools.islice(lines, pairs):
                pair = json.loads(line)
                total += len(pair["sentence_good"]) + len(pair["sentence_bad"]) + 2 * SENTENCE_OVERHEAD_CHARS
        weights[task] = total
    return weights


def balanced_shares(tasks: list[str], processes: int, weights: dict[str, int] | None = None) -> list[list[str]]:
    """`tasks` in `processes` shares: round robin, or with `weights` the heaviest task first to the
    lightest share (longest-processing-time first), so that the shares end together; each share keeps
    the tasks' order."""
    if weights is None:
        return [tasks[i::processes] for i in range(processes)]
    loads, members = [0] * processes, [set() for _ in range(processes)]
    for task in sorted(tasks, key=lambda t: (-weights[t], tasks.index(t))):
        lightest = min(range(processes), key=lambda i: (loads[i], len(members[i])))
        loads[lightest] += weights[task]
        members[lightest].add(task)
    return [[t for t in tasks if t in share] for share in members]


def process_count(requested: int | None, paradigms: int, on_cuda: bool) -> int:
    """How many processes score BLiMP: the request, else one per available core; never more than
    there are paradigms, and one on a GPU or where fork is not safe (only Linux forks here)."""
    if on_cuda or not sys.platform.startswith("linux") or paradigms < 2:
        return 1
    return max(1, min(requested or available_cores(), paradigms))


def blimp_group_metrics(per_task: dict[str, dict[str, Any]], paradigms: list[str],
                        sizes: dict[str, int]) -> dict[str, float]:
    """The `blimp` group's acc and its standard error from its paradigms, by lm-eval's functions and
    as `tasks/blimp.yaml` asks (the unweighted mean over paradigms)."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, unweighted_mean_stderr

    values = [per_task[p]["acc"] for p in paradigms]
    return {"acc": float(aggregate_subtask_metrics(values, [sizes[p] for p in paradigms], weight_by_size=False)),
            "acc_stderr": float(unweighted_mean_stderr([per_task[p]["acc_stderr"] for p in paradigms]))}


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let this process's allocator keep the memory a batch frees for the next batch (glibc only;
    returns whether it took the settings).

    A batch's logits and their float32 log-softmax (tens of MB at 64 sentences x 8,192 words) lie
    above glibc's mmap threshold: every batch maps fresh pages, the kernel zero-fills them on first
    touch, and freeing hands them back. Over BLiMP that is 16 million page faults and about 30 s of
    system time in a 2-core run (measured on the seed_cases general model: 31 s -> 3 s of system
    time, 16.4M -> 0.6M minor faults, user time unchanged). Set only in a share's forked process,
    which ends after scoring: the training process's allocator is left as it was."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        taken = [libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in
                 ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))]
        return all(taken)
    except (OSError, AttributeError):  # not glibc: its own allocator's defaults
        return False


def _die_with_parent() -> None:
    """Linux's PR_SET_PDEATHSIG: a share's process ends when the process that forked it does (killed
    outright included), rather than scoring on for nobody."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux's libc: the parent's own clean-up below still applies
        pass


def score_shares(score: Callable[[list[str]], dict[str, Any]], tasks: list[str], processes: int,
                 weights: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """`score(share)` for `processes` shares of `tasks` (`balanced_shares`), each in a forked child on
    an equal part of this process's threads; their JSON results in share order. A child that fails
    fails the whole call with its error."""
    import torch

    threads = max(1, torch.get_num_threads() // processes)
    shares = balanced_shares(tasks, processes, weights)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ptft_hf_shares_") as folder:
        children = []
        for index, share in enumerate(shares):
            out_path = Path(folder) / f"share_{index}.json"
            pid = os.fork()
            if pid == 0:  # the child: score its share, write the result, leave without the parent's exit handlers
                status = 1
                try:
                    _die_with_parent()
                    keep_freed_memory()
                    torch.set_num_threads(threads)
                    out_path.write_text(json.dumps(score(share)), encoding="utf-8")
                    status = 0
                except BaseException:  # noqa: BLE001 - reported to the parent, which raises
                    out_path.with_suffix(".error").write_text(traceback.format_exc(), encoding="utf-8")
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status)
            children.append((pid, out_path))
        log.info("BLiMP: %d paradigms in %d processes of %d thread(s)", len(tasks), processes, threads)
        results, failures, waiting = [], [], [pid for pid, _ in children]
        try:
            statuses = {}
            while waiting:  # each share reaped as it ends (our own children only), so that its time is its own
                for index, (pid, _) in enumerate(children):
                    if pid not in waiting:
                        continue
                    done, status, usage = os.wait4(pid, os.WNOHANG)
                    if done == 0:
                        continue
                    waiting.remove(pid)
                    statuses[pid] = status
                    log.info("BLiMP share %d: %d paradigms, done after %.1f s, %.1f s of CPU", index, len(shares[index]),
                             time.monotonic() - started, usage.ru_utime + usage.ru_stime)
                if waiting:
                    time.sleep(0.05)
            for pid, out_path in children:
                status = statuses[pid]
                if status != 0 or not out_path.is_file():
                    error = out_path.with_suffix(".error")
                    failures.append(error.read_text(encoding="utf-8") if error.is_file() else f"exit status {status}")
                else:
                    results.append(json.loads(out_path.read_text(encoding="utf-8")))
        finally:  # interrupted (Ctrl-C): the other shares stop too
            for pid in waiting:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    if failures:
        raise RuntimeError("a BLiMP scoring process failed:\n" + failures[0])
    return results
