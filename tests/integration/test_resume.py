"""Crash safety through the real CLI: a training process killed with SIGKILL, or stopped with
SIGTERM, continues from its last checkpoint when the same command runs again and ends with the same
weights, losses and log as an uninterrupted run; a non-finite loss stops the run with one line.

Training here is bit-for-bit deterministic on one machine (same seed, same data order, RNG states
restored from the checkpoint, no dropout), so the comparisons are exact up to allclose."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

# 60 optimiser steps, a checkpoint every 10; big enough that 40 steps outlast the poll below
RUN = ["data=builtin_docs", "data.max_train_samples=600", "data.max_eval_samples=40",
       "model.config.n_layer=2", "model.config.n_head=2", "model.config.n_embd=96", "model.config.n_positions=64",
       "model.tokenizer.vocab_size=512", "objective.block_size=64", "trainer.max_steps=60",
       "trainer.per_device_train_batch_size=16", "trainer.learning_rate=3e-3", "trainer.eval_steps=20",
       "trainer.save_steps=10", "trainer.save_total_limit=10", "trainer.logging_steps=5", "trainer.warmup_steps=2",
       "trainer.disable_tqdm=true", "samples.max_new_tokens=4"]


def _start(run_dir: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """The real CLI in the background; its output goes to files (a full pipe would block it)."""
    return subprocess.Popen([sys.executable, "-m", "ptft_hf", *RUN, f"hydra.run.dir={run_dir}"], env=env, cwd=cwd,
                            stdout=(cwd / "stdout.txt").open("w"), stderr=(cwd / "stderr.txt").open("w"))


def _wait_for_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    """Poll until the Trainer has finished writing `checkpoint` (trainer_state.json comes last)."""
    deadline = time.time() + timeout
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None, f"training ended before {checkpoint.name}"
        assert time.time() < deadline, f"no {checkpoint.name} after {timeout} s"
        time.sleep(0.01)


def _log(run_dir: Path) -> list[dict]:
    """train_log.jsonl without the wall-clock fields."""
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s" and "runtime" not in k and "per_second" not in k} for r in records]


def _assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = load_file(resumed / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-6), name
    m_got, m_want = json.loads((resumed / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert m_got["train_steps"] == m_want["train_steps"] == 60
    assert m_got["train_loss"] == pytest.approx(m_want["train_loss"], rel=1e-6)  # mean over all 60 steps, not the resumed ones
    assert m_got["eval_loss"] == pytest.approx(m_want["eval_loss"], rel=1e-6)
    log_got, log_want = _log(resumed), _log(reference)
    assert [r["step"] for r in log_got] == [r["step"] for r in log_want]  # no step logged twice or missing
    losses = lambda log: [r["loss"] for r in log if "loss" in r]  # noqa: E731
    assert losses(log_got) == pytest.approx(losses(log_want), rel=1e-6)  # the last logged loss included


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_env) -> Path:
    """The same command, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    result = run_cli([*RUN, f"hydra.run.dir={root / 'run'}"], cache_env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def test_sigkill_mid_training_resumes_to_the_same_weights(reference_run, cache_env, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, cache_env, tmp_path)
    _wait_for_checkpoint(proc, run_dir / "checkpoints" / "checkpoint-20")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()
    assert sorted(run_dir.glob("checkpoints/checkpoint-*"))

    result = run_cli([*RUN, f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)  # the very same command
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [line for line in result.stdout.splitlines() if "resuming the unfinished run" in line]
    assert len(resumed) == 1, result.stdout[-3000:]
    step = json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"]
    assert 20 <= step < 60 and step % 10 == 0 and f"checkpoint-{step} (step {step})" in resumed[0]
    _assert_same_run(run_dir, reference_run)


def test_sigterm_saves_a_checkpoint_first_and_resumes(reference_run, cache_env, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, cache_env, tmp_path)
    _wait_for_checkpoint(proc, run_dir / "checkpoints" / "checkpoint-10")
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("ptft-hf: interrupted")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    step = int(lines[0].split(" at step ")[1].split()[0])
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert step >= 10 and (checkpoint / "trainer_state.json").is_file(), lines[0]  # saved at the step it stopped
    assert f"checkpoint saved in {checkpoint}" in lines[0] and f"hydra.run.dir={run_dir}" in lines[0]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()

    result = run_cli([*RUN, f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] == step
    _assert_same_run(run_dir, reference_run)


def test_resume_from_an_explicit_checkpoint(reference_run, cache_env, tmp_path):
    """`trainer.resume_from_checkpoint=PATH` continues another folder's checkpoint in a new folder."""
    result = run_cli([*RUN, f"trainer.resume_from_checkpoint={reference_run / 'checkpoints' / 'checkpoint-30'}",
                      f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_file(tmp_path / "run" / "model" / "model.safetensors")
    want = load_file(reference_run / "model" / "model.safetensors")
    assert all(torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["resumed_from_step"] == 30


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cache_env, tmp_path):
    # learning rate 1e30: step 1 trains at lr 0 (warm-up), step 2's update sends the weights to
    # ~1e29, step 3's logits overflow and its loss is nan
    run_dir = tmp_path / "run"
    result = run_cli([*RUN, "trainer.learning_rate=1e30", "trainer.save_steps=1", "trainer.max_steps=10",
                      f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptft-hf: error:")]
    assert errors == [f"ptft-hf: error: training: loss became nan at step 3; lower trainer.learning_rate (now 1e+30) "
                      f"or raise trainer.warmup_steps; nothing from step 3 was saved (last good checkpoint: "
                      f"{run_dir / 'checkpoints' / 'checkpoint-2'})"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not (run_dir / "model").exists() and not (run_dir / "model.partial").exists()
    assert not (run_dir / "metrics.json").exists()


def test_overwrite_keeps_the_finished_run_aside_until_the_new_one_finishes(reference_run, cache_env, tmp_path):
    """overwrite=true on a finished run: killed half-way, the new run has not touched the old one
    (it waits in .replaced/); run again, the new run resumes, finishes, and only then the old goes."""
    def hashes(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}

    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    old = hashes(run_dir)
    command = [sys.executable, "-m", "ptft_hf", *RUN, "trainer.learning_rate=1e-3", "overwrite=true", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, env=cache_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ((run_dir / ".replaced").is_dir() and (run_dir / "config.yaml").exists()):  # the new run has started
        assert proc.poll() is None
        time.sleep(0.01)
    _wait_for_checkpoint(proc, run_dir / "checkpoints" / "checkpoint-20")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "metrics.json").exists()
    assert hashes(run_dir / ".replaced") == old  # the finished run, whole, set aside

    result = run_cli(command[3:], cache_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / ".replaced").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 20 and metrics["eval_loss"] != json.loads((reference_run / "metrics.json").read_text())["eval_loss"]
