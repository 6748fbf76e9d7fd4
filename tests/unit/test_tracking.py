"""The experiment store's pure parts: what a run folder gives a tracker, how projects and runs are
named, the checks of `tracking.*`, and that tracking never changes a run's fingerprint. The trackers
themselves are tested in tests/integration/test_tracking_stores.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptft_hf.checks import collect_problems
from ptft_hf.config.fingerprint import config_fingerprint
from ptft_hf.tracking import TRACKERS, Tracker, run_record
from ptft_hf.tracking.checks import tracking_problems
from ptft_hf.tracking.record import flat_numbers
from ptft_hf.tracking.store import matrix_record, pipeline_project, project_name
from tests.conftest import REPO_ROOT

OLD_STAGE = REPO_ROOT / "tests" / "fixtures" / "quickstart_tiny_c39be8c" / "pretrain"


def test_the_record_holds_every_number_of_metrics_json_and_every_logged_step():
    metrics = json.loads((OLD_STAGE / "metrics.json").read_text())
    record = run_record(OLD_STAGE, {"stage": "pretrain"})
    assert record.final["final/eval_perplexity"] == metrics["eval_perplexity"]
    assert record.final["final/data_train/tokens"] == metrics["data_train"]["tokens"]
    assert {k: v for k, v in record.final.items() if k.startswith("final/eval_perplexity_ci")} == {}  # none in this old run
    assert "final/beats_baseline" not in record.final and "final/run_name" not in record.final  # booleans, text: config
    assert len(record.final) == len(flat_numbers(metrics)) == 47
    log = [json.loads(line) for line in (OLD_STAGE / "train_log.jsonl").read_text().splitlines()]
    assert [step for step, _ in record.history] == [r["step"] for r in log]
    assert record.history[0][1]["test/eval_loss"] == log[0]["eval_loss"]  # before training, on the test split
    assert record.history[1][1]["loss"] == log[1]["loss"] and "time_s" not in record.history[1][1]
    assert record.last_step == 4
    assert record.config["config_fingerprint"] == metrics["config_fingerprint"] and record.config["stage"] == "pretrain"
    assert record.config["config"]["seed"] == record.config["seed"] == 42 and record.config["lineage"] == {}


def test_flat_numbers_keeps_finite_numbers_by_path():
    assert flat_numbers({"a": 1, "b": {"c": 2.5, "d": [3, float("nan")], "e": True, "f": "x"}}) == {"a": 1, "b/c": 2.5, "b/d/0": 3}


def test_projects_are_pipelines_and_sweeps_and_runs_their_stages_and_jobs(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-07" / "10-00-00"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    assert project_name(sweep / "0") == ("2026-12-07_10-00-00", "0")
    lone = tmp_path / "outputs" / "2026-12-07" / "11-00-00"
    assert project_name(lone) == ("runs", "2026-12-07_11-00-00")
    assert project_name(lone, "mine") == ("mine", "2026-12-07_11-00-00")
    assert pipeline_project(lone) == ("2026-12-07_11-00-00", "")
    assert pipeline_project(lone, "legal") == ("legal", "2026-12-07_11-00-00/")
    assert pipeline_project(sweep / "0") == ("2026-12-07_10-00-00", "0/")  # a pipeline as a sweep's job


def test_the_matrix_is_a_run_of_scored_cells():
    matrix = {"rows": {"general": {"cells": {"blimp": {"value": 0.54}, "banking77": {"na": "classifier"}}},
                       "legal": {"cells": {"legal": {"value": 2.7}}}}, "tasks": ["blimp"], "seconds": 3.0}
    assert matrix_record(matrix).final == {"final/general/blimp": 0.54, "final/legal/legal": 2.7}


def test_an_unknown_backend_is_one_line(monkeypatch):
    monkeypatch.delenv("PTFT_HF_TRACKING", raising=False)
    [problem] = tracking_problems(OmegaConf.create({"backend": "neptune"}))
    assert str(problem) == ("tracking.backend: 'neptune' is not a tracker; use tracking=trackio, mlflow, wandb, none or auto "
                            "(trackio when installed)")
    monkeypatch.setenv("PTFT_HF_TRACKING", "comet")
    [problem] = tracking_problems(OmegaConf.create({"backend": "auto"}))
    assert problem.field == "tracking.backend=auto ($PTFT_HF_TRACKING)" and "'comet' is not a tracker" in problem.what


def test_a_tracker_that_is_not_installed_names_its_extra(monkeypatch, compose_cfg):
    """The tracker's module is swapped for one that no environment has (its name is all that is read)."""
    monkeypatch.setitem(TRACKERS, "mlflow", Tracker("mlflow", "ptft_hf_no_such_module", "mlflow", ""))
    problems = collect_problems(compose_cfg("tracking=mlflow"))
    assert [str(p) for p in problems] == ["tracking: mlflow is not installed; pip install 'ptft_hf[mlflow]' (or tracking=none)"]


def test_tracking_is_not_part_of_the_fingerprint(compose_cfg):
    fingerprints = {config_fingerprint(compose_cfg(f"tracking={b}", "tracking.dir=/elsewhere")) for b in ("none", "mlflow")}
    assert fingerprints == {config_fingerprint(compose_cfg())}


@pytest.mark.parametrize("backend", ["auto", "trackio", "mlflow", "wandb", "none"])
def test_every_tracking_option_composes_with_its_backend(compose_cfg, backend):
    cfg = compose_cfg(f"tracking={backend}")
    assert cfg.tracking.backend == backend and Path(cfg.tracking.dir).name == "tracking" and cfg.tracking.project is None
