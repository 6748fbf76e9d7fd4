"""Shared fixtures: compose the real config tree, shrink it, give each test its own run folder
(after lightning-hydra-template's tests/conftest.py), and train each distinct shared run once.

- Hermetic: `pytest_configure` points every cache (HF datasets and Hub, the project's cache,
  Hydra's default output folders, matplotlib, Jupyter) under pytest's temporary folder before any
  test module imports the libraries; `pytest_sessionfinish` fails the session if the checkout or
  `~/.cache/ptft_hf` changed anyway.
- Shared runs (`tiny_run`, `quickstart_run`, `sweep_run`) are trained once per session, by the
  first pytest-xdist worker that needs them, into a folder every worker reads (a file lock keeps
  the others waiting). Tests read them; a test that writes works on a copy (`copy_run`).
- Under pytest-xdist every worker and its subprocesses use one thread (`OMP_NUM_THREADS=1`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PTFT_HF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptft_hf"

# A Hub token planted in the environment and on the command line of the shared runs: the secrets
# tests grep every file and every captured output for it.
PLANTED_TOKEN = "hf_plantedTokenThatMustNeverLeak0123456789"

# Small enough to train in seconds on 2 CPU cores; big enough that the loss visibly falls.
TINY_OVERRIDES = [
    "model.config.n_layer=1",
    "model.config.n_head=2",
    "model.config.n_embd=32",
    "model.config.n_positions=64",
    "model.tokenizer.vocab_size=512",
    "objective.block_size=32",
    "trainer.max_steps=30",
    "trainer.per_device_train_batch_size=8",
    "trainer.eval_steps=15",
    "trainer.save_steps=15",
    "trainer.logging_steps=5",
    "trainer.warmup_steps=2",
    "trainer.disable_tqdm=true",
    "samples.max_new_tokens=8",
]

# The one finished tiny run (CLI, resume reference, bad inputs, secrets): 60 steps, a checkpoint
# every 15 (all kept), an eval every 15, the planted token on the command line and in HF_TOKEN.
TINY_RUN = ["data=builtin_docs", "data.max_train_samples=600", "data.max_eval_samples=40", *TINY_OVERRIDES,
            "trainer.max_steps=60", "trainer.learning_rate=3e-3", "trainer.save_total_limit=10",
            f"trainer.hub_token={PLANTED_TOKEN}"]

# The quickstart pipeline, shrunk (pipeline, Hub and secrets tests): a 64-wide GPT-2 pretrained
# for 40 steps, then LoRA for 30 with a checkpoint every 15, and a dry run of the adapter's push.
QUICKSTART_TINY_MODEL = ("['model.config.n_layer=1','model.config.n_head=2','model.config.n_embd=64',"
                         "'model.tokenizer.vocab_size=512']")
# fp32 (trainer.bf16=false), as DISTRIBUTED_RUN: the two-process quickstart must reproduce this one,
# and a stage's "before" perplexity must equal its base stage's "after" to 1e-5.
QUICKSTART_SHARED = ["trainer.bf16=false", "objective.block_size=32", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=5",
                     "trainer.warmup_steps=2", "trainer.disable_tqdm=true", "samples.max_new_tokens=8",
                     "data.max_train_samples=300", "data.max_eval_samples=60"]
QUICKSTART_RUN = [
    "experiment=quickstart", f"stages.pretrain.extra={QUICKSTART_TINY_MODEL}",
    "stages.pretrain.overrides=['trainer.max_steps=40','trainer.learning_rate=3e-3','trainer.eval_steps=20','trainer.save_steps=20']",
    "stages.finetune.overrides=['trainer.max_steps=30','trainer.learning_rate=5e-3','trainer.eval_steps=15','trainer.save_steps=15']",
    *QUICKSTART_SHARED, "hub.dry_run=true", "hub.repo_id=me/quickstart-legal", f"trainer.hub_token={PLANTED_TOKEN}",
]

# A two-job multirun sweep with the planted token (multirun folders, secrets in multirun.yaml).
SWEEP_RUN = ["-m", "trainer.learning_rate=1e-3,3e-4", "data=builtin_docs", "data.max_train_samples=200",
             "data.max_eval_samples=20", *TINY_OVERRIDES, "trainer.max_steps=6", "trainer.save_steps=3",
             f"trainer.hub_token={PLANTED_TOKEN}"]

_HERMETIC_DIRS = {  # environment variable -> folder under pytest's temporary folder
    "PTFT_HF_CACHE": "ptft_hf",
    "PTFT_HF_OUTPUTS": "outputs",
    "PTFT_HF_MULTIRUN": "multirun",
    "HF_HOME": "hf_home",
    "HF_DATASETS_CACHE": "hf_datasets",
    "XDG_CACHE_HOME": "xdg_cache",
    "XDG_DATA_HOME": "xdg_data",
    "XDG_CONFIG_HOME": "xdg_config",
    "MPLCONFIGDIR": "matplotlib",
    "JUPYTER_RUNTIME_DIR": "jupyter_runtime",
    "IPYTHONDIR": "ipython",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "TRACKIO_DIR": "trackio",  # trackio's store outside a run (a run's is tracking.dir)
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb_cache",
    "WANDB_CONFIG_DIR": "wandb_config",
}


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set PTFT_HF_SHARED_DATA to its folder)")
    return path


def _xdist_worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


def _checkout_state() -> dict[str, str]:
    """Every file of the checkout outside the ignored build/venv folders, with its content hash."""
    skip = {".git", "__pycache__", ".ci", ".venv", "venv", "build", "dist"}
    state = {}
    for path in REPO_ROOT.rglob("*"):
        rel = path.relative_to(REPO_ROOT)
        if set(rel.parts) & skip or any(p.endswith(".egg-info") for p in rel.parts) or not path.is_file():
            continue
        state[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _user_cache_state() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in USER_CACHE.rglob("*")} if USER_CACHE.exists() else {}


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up its factory
def pytest_configure(config: pytest.Config) -> None:
    base = config._tmp_path_factory.getbasetemp() / "hermetic"  # the worker's own basetemp under xdist
    for name, sub in _HERMETIC_DIRS.items():
        os.environ[name] = str(base / sub)
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HF_HUB_DISABLE_TELEMETRY="1", WANDB_MODE="offline")
    os.environ["PTFT_HF_TRACKING"] = "none"  # tracking=auto tracks nothing in the suite's runs, but where a test asks
    os.environ["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if _xdist_worker():  # two workers on two cores: one thread each, for the subprocesses too
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
    if not _xdist_worker():  # the controller (or a run without xdist) watches what the session leaves behind
        config.stash[_STATE_KEY] = (_checkout_state(), _user_cache_state())


_STATE_KEY = pytest.StashKey[tuple]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when it wrote into the checkout or into ~/.cache/ptft_hf."""
    if _STATE_KEY not in session.config.stash:
        return
    checkout, cache = session.config.stash[_STATE_KEY]
    now_checkout, now_cache = _checkout_state(), _user_cache_state()
    changed = sorted(k for k in checkout.keys() | now_checkout.keys() if checkout.get(k) != now_checkout.get(k))
    changed += sorted(k for k in cache.keys() | now_cache.keys() if cache.get(k) != now_cache.get(k))
    if changed:
        session.config.get_terminal_writer().line(
            f"not hermetic: the suite changed {len(changed)} file(s) outside pytest's temporary folders: "
            + ", ".join(changed[:20]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> DictConfig from the real conf/ tree (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptft_hf.config import schema  # noqa: F401  (registers the schema)
    from ptft_hf.paths import conf_dir

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def cache_env() -> dict[str, str]:
    """Environment for subprocess runs: offline, the session's own caches (see pytest_configure)."""
    return dict(os.environ)


# What the CLI's forked processes find imported (tests/forked_processes.py): the libraries a run uses.
CLI_PRELOAD = ("numpy", "torch", "datasets", "transformers", "transformers.trainer", "peft", "accelerate", "bitsandbytes",
               "omegaconf", "hydra", "matplotlib.figure", "ptft_hf.cli", "ptft_hf.recipe", "ptft_hf.api", "ptft_hf.pipeline",
               "torch.distributed.fsdp", "benchmarks.forkserver")
STAND_IN = REPO_ROOT / "tests" / "forked_processes.py"
_fork_server: tuple[subprocess.Popen, str] | None = None


def _exec_every_process() -> bool:
    return os.environ.get("PTFT_TEST_CLI") == "exec"


def fork_server() -> str:
    """The socket of this worker's fork server (tests/forked_processes.py), started on first use in
    the session's environment (see pytest_configure) and stopped when the worker ends."""
    global _fork_server
    if _fork_server is None:
        import atexit
        import tempfile

        folder = tempfile.mkdtemp(prefix="ptft-fork-")  # short: a Unix socket's path is at most 107 bytes
        path = os.path.join(folder, "socket")
        server = subprocess.Popen([sys.executable, "-m", "tests.forked_processes", "serve", path, *CLI_PRELOAD],
                                  cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        if server.stdout.readline().strip() != "ready":
            server.kill()
            raise RuntimeError("the tests' fork server did not start (tests/forked_processes.py)")

        def stop() -> None:
            server.kill()
            server.wait()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        _fork_server = (server, path)
    return _fork_server[1]


def launched(env: dict[str, str], module: str = "ptft_hf") -> tuple[list[str], dict[str, str]]:
    """What torchrun or `accelerate launch` starts per rank, and the environment to launch with:
    a stand-in forked from the worker's server (`--no-python python -I tests/forked_processes.py
    MODULE`), or `-m MODULE` afresh with PTFT_TEST_CLI=exec."""
    if _exec_every_process():
        return ["-m", module], env
    from tests.forked_processes import SOCKET_ENV

    return ["--no-python", sys.executable, "-I", str(STAND_IN), module], dict(env, **{SOCKET_ENV: fork_server()})


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m ptft_hf <args>` in a process of its own, as subprocess.run would report it.

    The process is forked from a server that imported the libraries once per worker
    (tests/forked_processes.py: the start-up a CLI test would otherwise pay, ~8 s of CPU, paid once):
    the same module run as __main__ with the given environment, folder and PYTHONPATH hooks.
    PTFT_TEST_CLI=exec starts every one afresh with `sys.executable -m ptft_hf` instead."""
    if _exec_every_process():
        return subprocess.run([sys.executable, "-m", "ptft_hf", *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    import socket
    import tempfile

    from tests.forked_processes import forward_signal, read_replies, send_request

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as nothing, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(fork_server())
        send_request(sock, {"module": "ptft_hf", "argv": list(args), "env": dict(env), "cwd": str(cwd)},
                     [nothing.fileno(), out.fileno(), err.fileno()])
        sock.settimeout(timeout)
        code, timed_out = None, False
        while code is None:
            try:
                code = next((r["returncode"] for r in read_replies(sock) if "returncode" in r), None)
                if code is None:
                    raise RuntimeError("the tests' fork server ended during a run (tests/forked_processes.py)")
            except TimeoutError:  # past its time: the process and whatever it started, then its status
                timed_out = True
                sock.settimeout(None)
                forward_signal(sock, 9)
        stdout, stderr = (f.seek(0) or f.read().decode(errors="replace") for f in (out, err))
    if timed_out:
        raise subprocess.TimeoutExpired(["ptft_hf", *args], timeout, stdout, stderr)
    return subprocess.CompletedProcess(["ptft_hf", *args], code, stdout, stderr)


def run_benchmark_smoke(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], workloads: str,
                        timeout: int) -> tuple[dict, str]:
    """`python -m benchmarks.run --smoke --workloads <workloads>` on one thread; its JSON and stdout.
    The harness forks its one-process arms from its own server; torchrun's ranks (W5, W9) are forked
    from this worker's (`--torchrun-worker`, as the suite's torchrun runs: `launched`)."""
    root = tmp_path_factory.mktemp("bench-" + workloads.replace(",", ""))
    out = root / "bench.json"
    worker, env = launched(env, module="benchmarks.arms")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--workloads", workloads, "--out", str(out),
         "--workdir", str(root / "work"), "--torchrun-worker", shlex.join(worker)],
        cwd=REPO_ROOT, env=dict(env, OMP_NUM_THREADS="1", PTFT_HF_SHARED_DATA=str(shared_data())),
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text()), result.stdout


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` once per session for every xdist worker; the folder it filled.

    The first worker to ask builds under a file lock; the others wait and reuse it. A failed build
    is recorded, so the other workers fail at once with the same message instead of retrying.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if _xdist_worker() else base) / "shared-runs"
    root.mkdir(parents=True, exist_ok=True)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            pytest.fail(f"shared run {name!r} failed to build in another worker:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException as err:
                failed.write_text("".join(traceback.format_exception(err))[-6000:])
                raise
            done.write_text("")
    return folder


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a shared run folder, for a test that writes into it."""
    shutil.copytree(source, target, symlinks=True)
    return target


def _shared_cli_run(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], name: str, args: list[str],
                    folder_key: str = "hydra.run.dir", folder: str = "run", tracked: bool = False) -> Path:
    """`ptft-hf <args> <folder_key>=<shared>/<folder>` once per session, with the planted token in
    HF_TOKEN; what it printed is kept beside the folder (`cli_output`). `tracked`: with the default
    tracking (trackio when installed), its store in `<shared>/tracking` (`tracking_store`)."""
    def build(root: Path) -> None:
        run_env = dict(env, HF_TOKEN=PLANTED_TOKEN)
        if tracked:
            run_env.pop("PTFT_HF_TRACKING", None)
        tracking = [f"tracking.dir={root / 'tracking'}"] if tracked else []
        result = run_cli([*args, f"{folder_key}={root / folder}", *tracking], run_env, root)
        (root / "stdout.txt").write_text(result.stdout)
        (root / "stderr.txt").write_text(result.stderr)
        assert result.returncode == 0, result.stderr[-3000:]

    return shared_run(tmp_path_factory, name, build) / folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_env) -> Path:
    """The finished tiny GPT-2 run (`TINY_RUN`), trained once."""
    return _shared_cli_run(tmp_path_factory, cache_env, "tiny", TINY_RUN)


# The run the several-process tests must reproduce: 10 steps of 8 rows on one process (they run
# 2 processes x 4 rows), one thread as each of their ranks has.
# fp32 (trainer.bf16=false): several processes reproduce one to 1e-5 only when no activation is
# rounded to bf16; under bf16 autocast a last-bit difference of the all-reduced sum flips roundings.
DISTRIBUTED_RUN = ["data=builtin_docs", "data.max_train_samples=300", "data.max_eval_samples=40", *TINY_OVERRIDES,
                   "trainer.bf16=false",
                   "trainer.max_steps=10", "trainer.eval_steps=5", "trainer.save_steps=5", "trainer.logging_steps=1"]


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory, cache_env) -> Path:
    """DISTRIBUTED_RUN on one process with 8 rows per step, trained once."""
    return _shared_cli_run(tmp_path_factory, dict(cache_env, OMP_NUM_THREADS="1"), "single-process",
                           [*DISTRIBUTED_RUN, "trainer.per_device_train_batch_size=8"])


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, cache_env) -> Path:
    """The shrunk quickstart pipeline with a dry run of its push (`QUICKSTART_RUN`), trained once."""
    return _shared_cli_run(tmp_path_factory, cache_env, "quickstart", QUICKSTART_RUN, tracked=True)


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory, cache_env) -> Path:
    """A two-job multirun sweep with the planted token (`SWEEP_RUN`): `<folder>/{0,1}`."""
    return _shared_cli_run(tmp_path_factory, cache_env, "sweep", SWEEP_RUN, "hydra.sweep.dir", "sweep")


def tracking_store(run_dir: Path) -> Path:
    """The experiment store of a shared run built with `tracked=True`."""
    return run_dir.parent / "tracking"


def cli_output(run_dir: Path) -> str:
    """What the CLI printed while training a shared run (stdout and stderr)."""
    return (run_dir.parent / "stdout.txt").read_text() + (run_dir.parent / "stderr.txt").read_text()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def hub_reachable(monkeypatch):
    """Validation of configs that name Hub ids (nothing is downloaded): the suite runs with
    HF_HUB_OFFLINE=1, under which an id missing from the cache is a problem of its own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
