"""A sweep's summary: each configuration's mean, spread and range over its seeds, and the job chosen
on validation (never on the test figure)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from ptft_hf.run_dir import FINISHED_MARKER
from ptft_hf.sweep import across_seeds, chosen_on_validation, collect_sweep, format_seed_table, format_table


def _job(sweep: Path, job: int, overrides: list[str], accuracy: float, validation: float | None = None) -> None:
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / FINISHED_MARKER).write_text(json.dumps({
        "strategy": "full", "parameters": 10, "trainable_parameters": 10, "trainable_percent": 100.0,
        "train_loss": 1.0, "eval_accuracy_before": 0.1, "eval_accuracy": accuracy, "peak_memory_mb": 1,
        "saved_bytes": 0, "wall_time_s": 2.0, **({"validation_accuracy": validation} if validation is not None else {})}))


def test_jobs_differing_only_in_seed_are_grouped_with_mean_spread_and_range(tmp_path: Path) -> None:
    accuracies = {("1", "a"): 0.60, ("1", "b"): 0.59, ("2", "a"): 0.62, ("2", "b"): 0.58,
                  ("3", "a"): 0.61, ("3", "b"): 0.60}
    for job, ((seed, model), accuracy) in enumerate(accuracies.items()):  # Hydra's order: seed outermost
        _job(tmp_path, job, [f"seed={seed}", f"model.name_or_path={model}", "data=chemprot"], accuracy)

    groups = across_seeds(collect_sweep(tmp_path))

    assert [g["overrides"] for g in groups] == ["model.name_or_path=a data=chemprot", "model.name_or_path=b data=chemprot"]
    assert [g["jobs"] for g in groups] == [["0", "2", "4"], ["1", "3", "5"]]
    a = groups[0]["eval_accuracy"]
    assert a["mean"] == pytest.approx(0.61) and a["min"] == 0.60 and a["max"] == 0.62 and a["n"] == 3
    assert a["std"] == pytest.approx(statistics.stdev([0.60, 0.62, 0.61]))
    assert groups[1]["eval_accuracy"]["mean"] == pytest.approx(0.59)
    table = format_seed_table(groups)
    assert "| `model.name_or_path=a data=chemprot` | 3 | 0.61 ± 0.01 (0.6–0.62) |" in table


def test_a_sweep_without_repeated_seeds_has_no_seed_table(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["trainer.learning_rate=1e-3"], 0.5)
    _job(tmp_path, 1, ["trainer.learning_rate=3e-4"], 0.6)
    assert across_seeds(collect_sweep(tmp_path)) == []


def test_the_sweep_chooses_on_validation_not_on_the_test_figure(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["trainer.learning_rate=5e-4"], 0.90, validation=0.880)
    _job(tmp_path, 1, ["trainer.learning_rate=1e-3"], 0.89, validation=0.892)  # best on validation, not on test
    _job(tmp_path, 2, ["trainer.learning_rate=2e-3"], 0.88, validation=0.871)
    rows = collect_sweep(tmp_path)
    assert chosen_on_validation(rows)["job"] == "1"
    table = format_table(rows)
    assert "| 1 | `trainer.learning_rate=1e-3` | full | 10 (100.00%) | 1.0000 | accuracy 0.892 | accuracy 0.1 → 0.89 |" in table
    assert "Chosen on validation (validation_accuracy 0.892): job 1 (`trainer.learning_rate=1e-3`); " \
           "its test figure: accuracy 0.1 → 0.89." in table


def test_a_sweep_without_validation_figures_chooses_nothing(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["trainer.learning_rate=1e-3"], 0.5)
    _job(tmp_path, 1, ["trainer.learning_rate=3e-4"], 0.6)
    rows = collect_sweep(tmp_path)
    assert chosen_on_validation(rows) is None and "Chosen on validation" not in format_table(rows)
