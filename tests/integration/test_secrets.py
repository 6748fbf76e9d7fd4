"""A Hub token is never printed, logged or written into the run folder: the shared runs are
trained with one planted in the environment (HF_TOKEN) and on the command line
(`trainer.hub_token=`); every file and the captured output are grepped for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import PLANTED_TOKEN, cli_output

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("kind", ["run", "multirun", "pipeline"])
def test_planted_token_is_nowhere_in_the_run_folder_or_the_output(kind, request):
    folder = request.getfixturevalue({"run": "tiny_run", "multirun": "sweep_run", "pipeline": "quickstart_run"}[kind])
    run_dir = {"run": folder, "multirun": folder / "0", "pipeline": folder / "finetune"}[kind]
    assert (run_dir / "metrics.json").is_file() and list(run_dir.glob("checkpoints/checkpoint-*"))
    assert _files_holding(folder, PLANTED_TOKEN.encode()) == []  # checkpoints, .hydra/, logs, multirun.yaml, hub/
    assert PLANTED_TOKEN not in cli_output(folder)
    # the saved config says a token was set, without saying which
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["hub_token"] == "***"
    overrides = (folder if kind == "pipeline" else run_dir) / ".hydra" / "overrides.yaml"
    assert "trainer.hub_token=***" in overrides.read_text()
    assert not list(folder.rglob("training_args.bin"))  # the Trainer's pickle would carry hub_token
    if kind == "multirun":
        assert "trainer.hub_token=***" in (folder / "multirun.yaml").read_text()
