"""A pipeline folder an earlier version wrote (tests/fixtures/README.md) keeps working: its finished
stage is kept as it is, its unfinished one resumes from its checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "quickstart_tiny_c39be8c"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pipeline_an_older_version_left_keeps_its_finished_stage_and_resumes_the_other(cache_env, tmp_path):
    folder = Path(shutil.copytree(FIXTURE, tmp_path / "pipeline"))
    kept = {p: _sha256(folder / p) for p in ("pretrain/model/model.safetensors", "pretrain/metrics.json")}
    command = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    result = run_cli([*command, f"hydra.run.dir={folder}"], dict(cache_env, OMP_NUM_THREADS="1"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pipeline stage 'pretrain' already finished in {folder / 'pretrain'} with the same config: kept as it is" \
        in result.stdout + result.stderr
    assert {p: _sha256(folder / p) for p in kept} == kept
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["stages_trained"] == ["finetune"]
    finetune = json.loads((folder / "finetune" / "metrics.json").read_text())
    assert finetune["resumed_from_step"] == 2 and finetune["train_steps"] == 4
    assert (folder / "finetune" / "model" / "adapter_model.safetensors").is_file()
