"""The README's result figures are what the committed results files give (benchmarks/readme_tables.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks import readme_tables


def test_the_readme_tables_are_regenerated_byte_for_byte_from_the_results_files():
    text = readme_tables.README.read_text()
    blocks = readme_tables.BLOCK.findall(text)
    assert len(blocks) >= 1  # the README does hold generated tables
    assert readme_tables.render(text) == text, "README.md is stale: run `python -m benchmarks.readme_tables`"


def test_a_figure_edited_by_hand_is_written_back_from_its_results_file():
    text = readme_tables.README.read_text()
    match = readme_tables.BLOCK.search(text)
    edited = text.replace(match["body"], match["body"].replace("|", "| 99.9", 1))
    assert edited != text and readme_tables.render(edited) == text


def test_collect_keeps_the_figures_and_leaves_the_machines_paths_out(tmp_path, monkeypatch):
    folder = tmp_path / "outputs" / "p1"
    (folder / "pretrain").mkdir(parents=True)
    stage = {"eval_perplexity": 12.5, "base_model": str(folder / "pretrain" / "model"), "data": "wikitext2",
             "lineage": {"base_run_dir": "/elsewhere/runs/general"}}
    (folder / "metrics.json").write_text(json.dumps({"stages": {"finetune": stage}, "stage_order": ["finetune"]}))
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)
    record = json.loads(readme_tables.collect(folder, "demo", "ptft-hf experiment=demo").read_text())
    assert record["kind"] == "pipeline" and record["command"] == "ptft-hf experiment=demo"
    assert record["metrics"]["stages"]["finetune"] == {"eval_perplexity": 12.5, "base_model": "pretrain/model",
                                                        "data": "wikitext2", "lineage": {"base_run_dir": "runs/general"}}


def test_an_unknown_renderer_is_one_line():
    with pytest.raises(SystemExit, match="unknown renderer 'nope'.*pipeline_table"):
        readme_tables.render("<!-- results: nope x -->\n<!-- /results -->")


def test_collect_pairs_each_classifier_with_its_control_by_mcnemar(tmp_path, monkeypatch):
    folder = tmp_path / "p2"
    stages = {"support": {"data": "banking77", "objective": "classification", "eval_accuracy": 0.75,
                          "lineage": {"init_from_stage": "general"}},
              "support_control": {"data": "banking77", "objective": "classification", "eval_accuracy": 0.25,
                                  "random_init": True, "lineage": {"init_from_stage": "general"}}}
    for stage, correct in (("support", [1, 1, 1, 0]), ("support_control", [0, 0, 1, 0])):
        (folder / stage).mkdir(parents=True)
        (folder / stage / "test_predictions.jsonl").write_text(
            "".join(json.dumps({"index": i, "correct": bool(c)}) + "\n" for i, c in enumerate(correct)))
    (folder / "metrics.json").write_text(json.dumps({"stages": stages, "stage_order": list(stages)}))
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)
    record = json.loads(readme_tables.collect(folder, "p2", "").read_text())
    # 2 examples right only with pretraining, none only without: two-sided exact p = 2 * 0.5**2
    assert record["paired"] == {"support vs support_control": {"only_stage": 2, "only_control": 0, "p_value": 0.5}}
    table = readme_tables.pretraining_margins(["p2"])
    assert "| `support` | `support_control` | accuracy (higher is better) | 0.75 vs 0.25 (+0.5; McNemar p = 0.5, 2/0 discordant) |" \
        in table
    # the same two folders as separate runs (a specialist and its control trained outside a pipeline)
    for stage in stages:
        (folder / stage / "metrics.json").write_text(json.dumps(stages[stage]))
    runs = json.loads(readme_tables.collect(None, "p3", "", {s: folder / s for s in stages}).read_text())
    assert runs["kind"] == "runs" and runs["paired"] == record["paired"]
    assert list(runs["metrics"]["stages"]) == ["support", "support_control"]
