"""A Hub token is never printed, logged or written into the run folder: plant one in the
environment and on the command line, train, and grep every file and the captured output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.integration

PLANTED = "hf_plantedSECRET123"


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_planted_token_is_nowhere_in_the_run_folder_or_the_output(multirun, cache_env, tmp_path):
    env = {**cache_env, "HF_TOKEN": PLANTED}
    folder = tmp_path / "out"
    where = [f"hydra.sweep.dir={folder}", "-m"] if multirun else [f"hydra.run.dir={folder}"]
    result = run_cli(["data=builtin_docs", "data.max_train_samples=200", "data.max_eval_samples=20", *TINY_OVERRIDES,
                      "trainer.max_steps=6", "trainer.save_steps=3", f"trainer.hub_token={PLANTED}", *where], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = folder / "0" if multirun else folder
    assert (run_dir / "metrics.json").is_file() and list(run_dir.glob("checkpoints/checkpoint-*"))
    assert _files_holding(folder, PLANTED.encode()) == []  # checkpoints, .hydra/, logs, multirun.yaml included
    assert PLANTED not in result.stdout and PLANTED not in result.stderr
    # the saved config says a token was set, without saying which
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["hub_token"] == "***"
    assert "trainer.hub_token=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert not list(run_dir.rglob("training_args.bin"))  # the Trainer's pickle would carry hub_token
