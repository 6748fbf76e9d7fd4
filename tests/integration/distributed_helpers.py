"""What the several-process tests share: the run, the launcher, the comparison with one process,
and the kill of a whole job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import DISTRIBUTED_RUN, launched

RUN = DISTRIBUTED_RUN


def torchrun(args: list[str], env: dict[str, str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m ptft_hf <args>`; each rank forked from the
    worker's pre-imported server unless PTFT_TEST_CLI=exec (tests/forked_processes.py)."""
    worker, env = launched(env)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                           *worker, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def run_in_process(compose_cfg, args: list[str], run_dir: Path) -> dict:
    """A one-process reference run in this process (compose + `recipe.run`, as the CLI composes and
    runs it) on one thread, as each rank of the several-process runs it is compared with has: no
    interpreter start-up and imports to pay again where the CLI layer is not what is tested."""
    from ptft_hf.recipe import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(compose_cfg(*args), run_dir)
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_training(run_dir: Path, reference: Path, weights: str = "model.safetensors", atol: float = 1e-5) -> None:
    """Same final weights (within atol), same token counts, same losses as the reference run."""
    ours, want = (load_file(d / "model" / weights) for d in (run_dir, reference))
    assert ours.keys() == want.keys()  # tied weights once: FSDP's gathered save as one process's
    for name in want:  # measured: largest difference 4e-7 (DDP), 9e-7 (FSDP)
        torch.testing.assert_close(ours[name], want[name], rtol=0, atol=atol, msg=name)
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    for key in ("train_tokens", "eval_tokens", "data_train", "data_eval", "train_steps"):
        assert got[key] == expected[key], key
    for key in ("eval_loss", "eval_loss_before", "eval_accuracy", "train_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def reloaded_sample(run_dir) -> dict[str, str]:
    """The first sample prompt continued by model/ loaded whole in this one process, as the run
    continued it with the sharded model at its end (metrics.json's `sample`)."""
    from ptft_hf.api import open_run
    from ptft_hf.config.schema import SamplesConfig
    from ptft_hf.training.callbacks import generate_samples

    model, tokenizer = open_run(run_dir, device="cpu", dtype="float32").load()
    samples = yaml.safe_load((run_dir / "config.yaml").read_text())["samples"]
    return generate_samples(model, tokenizer, SamplesConfig(**samples))[0]


# The whole job (torchrun's agent and both workers) killed with SIGKILL right after every rank has
# saved its part of checkpoint PTFT_TEST_KILL_AT_STEP, as a scheduler ending a job would: the ranks
# meet at a barrier after the save, then rank 0 kills its siblings, the agent and itself.
KILL_JOB_AT_SAVE = """
import os, signal
from transformers import trainer_callback

_step, _on_save = int(os.environ["PTFT_TEST_KILL_AT_STEP"]), trainer_callback.CallbackHandler.on_save


def on_save(self, args, state, control):
    control = _on_save(self, args, state, control)
    if state.global_step == _step:
        import torch.distributed as dist

        dist.barrier()
        if dist.get_rank() == 0:
            started = int(os.environ.get("PTFT_FORKED_FOR", os.getpid()))  # the process torchrun started
            agent = int(open(f"/proc/{started}/stat").read().rsplit(")", 1)[1].split()[1])
            workers = open(f"/proc/{agent}/task/{agent}/children").read().split()
            os.kill(agent, signal.SIGKILL)
            for pid in map(int, workers):  # a forked rank's stand-in killed: its server kills the rank
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
    return control


trainer_callback.CallbackHandler.on_save = on_save
"""
