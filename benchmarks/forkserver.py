"""Arms forked from one pre-imported parent (`benchmarks.run --fork`, the default with `--smoke`),
and the test suite's CLI runs (`python -m ptft_hf`, tests/conftest.py `run_cli`).

    python -m benchmarks.forkserver [MODULE ...]  # started by ForkServer, spoken to over stdin/stdout

Every arm of a smoke run pays mostly for its imports (torch, transformers, peft, bitsandbytes,
datasets, the project: several seconds of CPU each) and then trains one step. This server imports
all of that once, in the environment the arms get (`common.offline_env`: the libraries read their
cache folders from it at import time), then forks one child per arm. A child is still a process
of its own: nothing an arm builds, caches in memory or leaves running reaches the next arm, since
each is forked from the same clean parent, which never trains, tokenises or starts a thread pool.
The child runs exactly what `python -m benchmarks.arms ...` runs (`benchmarks.arms.main`), with
stdout and stderr in the arm's log, in a session of its own (a timeout kills the arm with its
workers), and exits as that process would (exit-time handlers, then its status).

What forking changes: the arm's own process skips the imports, so its resident size right after
start-up already holds the pre-imported libraries, some pages of them shared with the parent.
Memory figures (W3's growth over the post-import baseline, W8's proportional set sizes) are
therefore for smoke runs only; the measured runs (no `--smoke`) start every arm afresh unless
`--fork` is asked for. Several-process arms (W5 `two`, under torchrun) are never forked.

A child that runs a module (`"module": "ptft_hf"`) becomes `python -m ptft_hf <argv>` as the
interpreter would start it with the request's environment: in the request's folder, the module run
as `__main__` (`runpy`), the `sitecustomize` of a folder the request's PYTHONPATH adds (the
tests' signal and kill hooks) run first, and torch's thread count set from OMP_NUM_THREADS (the
OpenMP runtime read the variable once, in the parent). What it cannot change: environment
variables that a library reads only at import (the server starts with the callers' environment:
the caches, offline switches), and the interpreter's own start-up (the console script and a cold
start are tests/integration/test_packaging.py's).

Protocol, one JSON object per line: the server says {"ready": [modules]} once; for each request
{"argv": [...], "env": {...}, "log": path} (optionally "module", "cwd", and "stdout"/"stderr"
paths instead of the one log) it answers {"pid": n} when the child started and {"returncode": n}
when it ended (negative: killed by that signal, as `subprocess` reports it).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

# what the arms import (each arm module imports its own heavy libraries lazily, inside the arm)
PRELOAD = (
    "numpy", "torch", "datasets", "transformers", "transformers.trainer", "peft", "accelerate", "bitsandbytes",
    "omegaconf", "hydra", "matplotlib.figure", "ptft_hf.api", "ptft_hf.recipe", "ptft_hf.objectives", "ptft_hf.strategies",
    "ptft_hf.data.sources", "ptft_hf.data.packing", "ptft_hf.models.loading", "ptft_hf.models.tokenizers",
    "ptft_hf.training.precision", "ptft_hf.distributed",
    "benchmarks.arms", "benchmarks.prepare", "benchmarks.mfu", "benchmarks.w1_clm", "benchmarks.w2_classification",
    "benchmarks.w3_memory", "benchmarks.w4_data", "benchmarks.w5_distributed", "benchmarks.w7_sft", "benchmarks.w8_corpus",
)


def _send(channel, payload: dict) -> None:
    channel.write(json.dumps(payload) + "\n")
    channel.flush()


_OWN_PYTHONPATH = os.environ.get("PYTHONPATH", "").split(os.pathsep)  # the server's, read before any child changes it


def _added_path(env: dict[str, str]) -> list[str]:
    """The folders the request's PYTHONPATH adds to this server's own."""
    own = _OWN_PYTHONPATH
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in own]


def _run_module(module: str, argv: list[str], env: dict[str, str]) -> int:
    """`python -m module argv...` in this (forked) process; its exit status."""
    added = _added_path(env)
    sys.path[0:0] = added
    for folder in added:  # what site.py does at start-up: the first sitecustomize on the path runs
        hook = Path(folder) / "sitecustomize.py"
        if hook.is_file():
            try:
                runpy.run_path(str(hook), run_name="sitecustomize")
            except Exception as err:  # noqa: BLE001  (site.py reports a failing hook and starts anyway)
                sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(err).__name__}: {err}\n")
            break
    if env.get("OMP_NUM_THREADS", "").isdigit() and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = [module, *argv]  # runpy puts the module's file in argv[0], as -m does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        sys.stderr.write(f"{exit_.code}\n")  # sys.exit("message"): printed, status 1
        return 1
    return 0


def end_as_process(run: Callable[[], int]) -> NoReturn:
    """In a forked child: `run()`, then end as an interpreter ends a process: exit-time handlers,
    a traceback and status 1 for an uncaught exception, flushed streams, `os._exit(status)`."""
    code = 1
    try:
        code = run()
        import atexit

        atexit._run_exitfuncs()  # what the interpreter runs at exit in a fresh process
    except BaseException:  # noqa: BLE001  (reported on the child's stderr; the status says it failed)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _child(request: dict) -> NoReturn:
    """In the forked child: become `python -m <module> <argv>` (benchmarks.arms unless the request
    names another) and never return."""
    def run() -> int:
        os.setsid()
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(request.get("stdout", request.get("log")), flags, 0o644)
        err = os.open(request.get("stderr", request.get("log")), flags, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (out, err, devnull):
            os.close(fd)
        sys.stdout = sys.__stdout__  # the server had pointed it at stderr, off the protocol channel
        module = request.get("module", "benchmarks.arms")
        if module != "benchmarks.arms":
            return _run_module(module, request["argv"], request["env"])
        sys.argv = [sys.argv[0], *request["argv"]]
        from benchmarks.arms import main

        try:
            return main(request["argv"])
        except SystemExit as exit_:  # argparse's errors
            return exit_.code if isinstance(exit_.code, int) else 1

    end_as_process(run)


def main() -> int:
    requests, replies = sys.stdin, sys.stdout
    sys.stdout = sys.stderr  # whatever the imports print stays off the protocol channel
    loaded = []
    for name in sys.argv[1:] or PRELOAD:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError:  # an optional library missing: the arm that needs it says so itself
            pass
    _send(replies, {"ready": loaded})
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stderr.flush()
        replies.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _send(replies, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(replies, {"returncode": os.waitstatus_to_exitcode(status)})
    return 0


class ForkServer:
    """The orchestrator's side: start the server in `env` (the arms' environment) from `cwd`, then
    `run(argv, env, log, timeout)` -> the arm's exit status, as `subprocess.run(...).returncode`
    would give it (-9 after a timeout, as `benchmarks.run` records one)."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, timeout: float = 600, preload: tuple[str, ...] = ()):
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.forkserver", *preload], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        ready = self._receive(timeout)
        if ready is None or "ready" not in ready:
            self.close()
            raise RuntimeError(f"the fork server did not start (log: {log})")
        self.preloaded = ready["ready"]

    def _receive(self, timeout: float | None) -> dict | None:
        """The server's next line, or None when `timeout` seconds pass first (or it ended)."""
        stdout = self.process.stdout
        if timeout is not None and not select.select([stdout], [], [], max(timeout, 0))[0]:
            return None
        line = stdout.readline()
        return json.loads(line) if line else None

    def run(self, argv: list[str], env: dict[str, str], log: Path, timeout: float, **options: str) -> int:
        """`options`: module, cwd, stdout and stderr (paths), as in the protocol."""
        deadline = time.monotonic() + timeout
        self.process.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log), **options}) + "\n")
        self.process.stdin.flush()
        started = self._receive(timeout)
        if started is None:
            raise RuntimeError("the fork server stopped answering")
        ended = self._receive(deadline - time.monotonic())
        if ended is None:  # past the arm's time: the arm and whatever it started, then its status
            try:
                os.killpg(started["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._receive(None)
            return -9
        return ended["returncode"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


if __name__ == "__main__":
    raise SystemExit(main())
