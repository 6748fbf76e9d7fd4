"""What people look at: the loss plot's marks, the pipeline page (report.html) built from the
seed_cases results file (eleven stages, controls, the evaluation matrix), the sweep's metric against
the swept value, and `ptft-hf-compare`'s one-line refusals."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.figure import Figure

from ptft_hf.compare import main as compare_main
from ptft_hf.pipeline.html_report import tree_layout, write_html_report
from ptft_hf.sweep import SweepPoint, sweep_points
from ptft_hf.training.report import draw_losses
from tests.conftest import REPO_ROOT

SEED_CASES = json.loads((REPO_ROOT / "benchmarks" / "results" / "seed_cases_2026-12-06_seed42.json").read_text())
OLD_STAGE = REPO_ROOT / "tests" / "fixtures" / "quickstart_tiny_c39be8c" / "pretrain"


def test_the_loss_plot_marks_each_evaluation_the_test_split_and_the_resumed_step():
    records = [{"step": 0, "eval_loss": 6.0, "split": "test"}, {"step": 5, "loss": 5.0}, {"step": 10, "loss": 4.0},
               {"step": 10, "eval_loss": 4.5, "split": "validation"}, {"step": 20, "loss": 3.0},
               {"step": 20, "eval_loss": 3.5, "split": "validation"}, {"step": 20, "eval_loss": 3.6, "split": "test"}]
    ax = Figure().subplots()
    assert draw_losses(ax, records, resumed_at=10)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["train loss"].get_xdata()) == [5, 10, 20]
    assert list(lines["validation loss"].get_ydata()) == [4.5, 3.5]
    assert list(lines["test loss (before, after)"].get_xdata()) == [0, 20]
    assert lines["resumed at step 10"].get_linestyle() == "--"
    marks = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in marks) == [10, 20]  # one dotted line per evaluation
    assert not draw_losses(Figure().subplots(), [])


def test_the_tree_puts_specialists_after_their_base_and_controls_last():
    stages = {n: SEED_CASES["metrics"]["stages"][n] for n in SEED_CASES["metrics"]["stage_order"]}
    assert tree_layout(stages, {}) == {
        "general": (0, 0), "legal": (1, 1), "legal_control": (3, 1), "legal_no_replay": (1, 2), "support": (1, 3),
        "support_control": (3, 3), "support_control_tuned": (3, 4), "medical": (1, 5), "chemprot": (2, 6),
        "chemprot_control": (3, 6), "chemprot_general": (1, 7)}


def test_the_page_holds_every_stage_the_seed_table_and_the_heatmap_and_asks_nothing_of_the_network(tmp_path):
    run_dir = tmp_path / "seed_cases"
    run_dir.mkdir()
    page = write_html_report(run_dir, SEED_CASES["metrics"], {}, "11 stages", SEED_CASES["eval_matrix"]).read_text()
    stages = SEED_CASES["metrics"]["stage_order"]
    assert re.findall(r'data-stage="([^"]+)"', page) == stages  # a node per stage, in the pipeline's order
    assert "<th>legal_no_replay</th>" in page and "<th>parameters updated</th>" in page  # the seed's table
    assert "<h2>Evaluation matrix</h2>" in page and page.count("<svg") == 2  # the tree and the heatmap (no stage folders here)
    assert "<p>No training log.</p>" in page
    assert "<script" not in page and not re.findall(r'(?:src|href)="(?!data:|#)', page)  # nothing to fetch
    assert "stroke-dasharray" in page  # the controls' edges: architecture only


def test_a_sweep_plots_the_mean_over_seeds_against_the_swept_value():
    rows = [{"overrides": f"trainer.learning_rate={lr} seed={s}", "eval_perplexity": p}
            for lr, s, p in (("1e-3", 1, 10.0), ("1e-3", 2, 12.0), ("1e-2", 1, 20.0), ("1e-2", 2, 30.0))]
    metric, swept, points = sweep_points(rows)
    assert (metric, swept) == ("eval_perplexity", ["trainer.learning_rate"])
    assert points == [SweepPoint("1e-3", 0.001, 11.0, pytest.approx(2 ** 0.5), 2), SweepPoint("1e-2", 0.01, 25.0, pytest.approx(50 ** 0.5), 2)]
    strategies = [{"overrides": f"strategy={s}", "train_loss": 1.0 + i} for i, s in enumerate(("full", "lora"))]
    assert [(p.label, p.x, p.std) for p in sweep_points(strategies)[2]] == [("full", 0.0, 0.0), ("lora", 1.0, 0.0)]
    assert sweep_points([{"overrides": f"seed={s}", "train_loss": 1.0} for s in (1, 2)])[2] == []  # only seeds: no plot


def test_compare_refuses_folders_without_a_finished_run_in_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "job").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        compare_main([str(tmp_path / "empty"), str(tmp_path / "missing")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"ptft-hf-compare: error: PATH: no finished run (no metrics.json) in {tmp_path / 'empty'}, "
                                       f"{tmp_path / 'missing'}; give run, pipeline or sweep folders whose runs finished\n")


def test_compare_refuses_metrics_no_run_has_and_lists_those_they_have(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare_main([str(OLD_STAGE), "--metrics", "eval_perplexity,eval_bleu", "--out", str(tmp_path / "c.png")])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("ptft-hf-compare: error: --metrics: no run has eval_bleu; choose among the metrics they have: "
                           "data_eval/block_size, data_eval/blocks,")
    assert ", eval_perplexity, " in line and not (tmp_path / "c.png").exists()
