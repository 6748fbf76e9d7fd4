"""Crash safety through the real CLI: a training process killed with SIGKILL, or stopped with
SIGTERM or SIGINT, continues from its last checkpoint when the same command runs again and ends with the same
weights, losses and log as an uninterrupted run; a non-finite loss stops the run with one line.

Training here is bit-for-bit deterministic on one machine (same seed, same data order, RNG states
restored from the checkpoint, no dropout), so the comparisons are exact up to allclose."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptft_hf.errors import UserError
from tests.conftest import PLANTED_TOKEN, TINY_RUN, copy_run, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The same command as the shared tiny run (tests/conftest.py TINY_RUN: 60 steps, a checkpoint every
# 15, all kept), whose finished folder is the uninterrupted reference.
RUN = TINY_RUN

# Loaded by the CLI subprocess at start-up (sitecustomize on PYTHONPATH): sends the process a real
# signal right after the Trainer has saved the checkpoint of step PTFT_TEST_SIGNAL_AT_STEP, so the
# interruption always lands at the same point instead of racing a poll of the run folder.
SIGNAL_AT_SAVE = """
import os, signal
from transformers import trainer_callback

_step, _signal = int(os.environ["PTFT_TEST_SIGNAL_AT_STEP"]), getattr(signal, os.environ["PTFT_TEST_SIGNAL"])
_on_save = trainer_callback.CallbackHandler.on_save


def on_save(self, args, state, control):
    control = _on_save(self, args, state, control)
    if state.global_step == _step:
        os.kill(os.getpid(), _signal)
    return control


trainer_callback.CallbackHandler.on_save = on_save
"""


def _signal_env(env: dict[str, str], folder: Path, name: str, step: int) -> dict[str, str]:
    hook = folder / "signal_at_save"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SIGNAL_AT_SAVE)
    return dict(env, HF_TOKEN=PLANTED_TOKEN, PTFT_TEST_SIGNAL=name, PTFT_TEST_SIGNAL_AT_STEP=str(step),
                PYTHONPATH=f"{hook}{os.pathsep}{env['PYTHONPATH']}")


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
def reference_run(tiny_run) -> Path:
    """The same command, never interrupted: the session's shared tiny run."""
    return tiny_run


def test_sigkill_mid_training_resumes_to_the_same_weights(reference_run, cache_env, tmp_path):
    run_dir = tmp_path / "run"
    killed = run_cli([*RUN, f"hydra.run.dir={run_dir}"], _signal_env(cache_env, tmp_path, "SIGKILL", 30), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()
    assert sorted(p.name for p in run_dir.glob("checkpoints/checkpoint-*")) == ["checkpoint-15", "checkpoint-30"]

    result = run_cli([*RUN, f"hydra.run.dir={run_dir}"], dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]  # the very same command
    resumed = [line for line in result.stdout.splitlines() if "resuming the unfinished run" in line]
    assert len(resumed) == 1 and "checkpoint-30 (step 30)" in resumed[0], result.stdout[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] == 30
    _assert_same_run(run_dir, reference_run)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_a_checkpoint_first_and_resumes(reference_run, cache_env, tmp_path, name):
    """SIGTERM (a scheduler's stop) and SIGINT (Ctrl-C) during training: the step in progress
    finishes, a checkpoint is saved at it, exit 128 + the signal's number (143, 130), one line;
    the same command resumes from it to the uninterrupted run's weights."""
    run_dir = tmp_path / "run"
    stopped = run_cli([*RUN, f"hydra.run.dir={run_dir}"], _signal_env(cache_env, tmp_path, name, 15), cwd=tmp_path)
    signum = getattr(signal, name)
    assert stopped.returncode == 128 + signum == {"SIGTERM": 143, "SIGINT": 130}[name], stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("ptft-hf: interrupted")]
    assert len(lines) == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "checkpoint-16"  # the step after the signal, saved when it ended
    assert lines[0] == (f"ptft-hf: interrupted by {name} at step 16 (checkpoint saved in {checkpoint}); to resume, "
                        f"run the same command with hydra.run.dir={run_dir}")
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()
    if name == "SIGINT":  # the same handler and checkpoint as SIGTERM's: resuming from it is tested once
        return

    result = run_cli([*RUN, f"hydra.run.dir={run_dir}"], dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] == 16
    _assert_same_run(run_dir, reference_run)


def test_resume_from_an_explicit_checkpoint(reference_run, cache_env, tmp_path):
    """`trainer.resume_from_checkpoint=PATH` continues another folder's checkpoint in a new folder."""
    result = run_cli([*RUN, f"trainer.resume_from_checkpoint={reference_run / 'checkpoints' / 'checkpoint-30'}",
                      f"hydra.run.dir={tmp_path / 'run'}"], dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_file(tmp_path / "run" / "model" / "model.safetensors")
    want = load_file(reference_run / "model" / "model.safetensors")
    assert all(torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["resumed_from_step"] == 30


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(compose_cfg, tmp_path):
    """In-process (the recipe's refusal, not the CLI's, is under test; test_cli_errors covers the CLI layer).
    Learning rate 1e30: step 1 trains at lr 0 (warm-up), step 2's update sends the weights to ~1e29,
    step 3's logits overflow and its loss is nan."""
    from ptft_hf.recipe import run

    run_dir = tmp_path / "run"
    cfg = compose_cfg(*RUN, "trainer.learning_rate=1e30", "trainer.save_steps=1", "trainer.max_steps=10")
    with pytest.raises(UserError) as err:
        run(cfg, run_dir)
    assert [str(p) for p in err.value.problems] == [
        f"training: loss became nan at step 3; lower trainer.learning_rate (now 1e+30) or raise trainer.warmup_steps; "
        f"nothing from step 3 was saved (last good checkpoint: {run_dir / 'checkpoints' / 'checkpoint-2'})"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not (run_dir / "model").exists() and not (run_dir / "model.partial").exists()
    assert not (run_dir / "metrics.json").exists()


def test_overwrite_keeps_the_finished_run_aside_until_the_new_one_finishes(reference_run, cache_env, tmp_path):
    """overwrite=true on a finished run: killed half-way, the new run has not touched the old one
    (it waits in .replaced/); run again, the new run resumes, finishes, and only then the old goes."""
    def hashes(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}

    run_dir = copy_run(reference_run, tmp_path / "run")
    old = hashes(run_dir)
    command = [*RUN, "trainer.learning_rate=1e-3", "overwrite=true", f"hydra.run.dir={run_dir}"]
    killed = run_cli(command, _signal_env(cache_env, tmp_path, "SIGKILL", 30), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "checkpoint-30").is_dir() and not (run_dir / "metrics.json").exists()
    assert hashes(run_dir / ".replaced") == old  # the finished run, whole, set aside

    result = run_cli(command, dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / ".replaced").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 30
    assert metrics["eval_loss"] != json.loads((reference_run / "metrics.json").read_text())["eval_loss"]
