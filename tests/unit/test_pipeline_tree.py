"""A pipeline whose stages fan out from one pretrained stage (a tree): the run order, each branch's
lineage, and a re-run that keeps the finished branches and resumes only the unfinished one.

The stages' training is replaced by a recorder that writes what a finished run leaves
(`metrics.json` with the config fingerprint, `model/`), or, for the stage told to crash, what a
run killed after its first checkpoint leaves; planning, composing, lineage and the pipeline report
are the real code. Training itself is covered by tests/integration/test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ptft_hf
from ptft_hf.errors import UserError
from ptft_hf.pipeline import config_fingerprint, run_pipeline, shared_overrides, stage_ancestors

# general -> legal -> legal_sft, and general -> support: two branches from one pretrained model
TREE_YAML = """# @package _global_
stages:
  general: {model: tiny_gpt2, data: builtin_docs, strategy: full}
  legal: {init_from: general, data: builtin_licenses, strategy: lora}
  support: {init_from: general, data: builtin_docs, strategy: lora}
  legal_sft: {init_from: legal, data: builtin_licenses, strategy: full}
"""


@pytest.fixture(autouse=True)
def tree_experiment(tmp_path, monkeypatch):
    """`experiment=tree` from a folder of the test's own, on Hydra's search path (as a user's own
    experiment file would be)."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "tree.yaml").write_text(TREE_YAML)
    TREE[:] = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=tree"]


TREE: list[str] = []


class Recorder:
    """Stands in for `ptft_hf.recipe.run`: records each stage's base and lineage and leaves a
    finished run folder, or an unfinished one (a checkpoint, no metrics.json) for `crash`."""

    def __init__(self, crash: str | None = None):
        self.calls: list[dict] = []
        self.crash = crash

    def __call__(self, cfg, run_dir, references=None, lineage=None, track=True):
        run_dir = Path(run_dir)
        self.calls.append({"stage": run_dir.name, "base": cfg.model.name_or_path, "lineage": dict(lineage or {}),
                           "references": sorted(references or {}),
                           "resume": cfg.trainer.get("resume_from_checkpoint")})
        (run_dir / "checkpoints" / "checkpoint-5").mkdir(parents=True, exist_ok=True)
        if run_dir.name == self.crash:
            raise KeyboardInterrupt("killed after checkpoint-5")
        (run_dir / "model").mkdir(exist_ok=True)
        metrics = {"config_fingerprint": config_fingerprint(cfg), "lineage": dict(lineage or {}),
                   "objective": cfg.objective.name, "strategy": cfg.strategy.name, "data": cfg.data.name,
                   "data_train": {"documents": 10, "tokens": 1000}, "train_flops_estimate": 1e9,
                   "trainable_parameters": 10, "trainable_percent": 1.0, "eval_loss": 2.0, "eval_perplexity": 7.4}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.fixture
def recorder(monkeypatch):
    import ptft_hf.recipe

    def install(crash: str | None = None) -> Recorder:
        fake = Recorder(crash)
        monkeypatch.setattr(ptft_hf.recipe, "run", fake)
        return fake

    return install


def _run(run_dir: Path, *extra: str) -> dict:
    experiment = ptft_hf.compose(*TREE, *extra)
    return run_pipeline(experiment.cfg, run_dir, shared_overrides([*TREE, *extra]))


def test_a_tree_runs_in_dependency_order_and_each_branch_has_its_own_lineage(recorder, tmp_path):
    fake = recorder()
    summary = _run(tmp_path / "run")
    assert [c["stage"] for c in fake.calls] == ["general", "legal", "support", "legal_sft"]
    by_stage = {c["stage"]: c for c in fake.calls}
    assert by_stage["general"]["lineage"] == {} and by_stage["general"]["base"] is None  # built from its config
    for stage, base in (("legal", "general"), ("support", "general"), ("legal_sft", "legal")):
        lineage = by_stage[stage]["lineage"]
        assert lineage["init_from_stage"] == base
        assert lineage["base_model"] == by_stage[stage]["base"] == str((tmp_path / "run" / base / "model").resolve())
        base_metrics = json.loads((tmp_path / "run" / base / "metrics.json").read_text())
        assert lineage["base_config_sha256"] == base_metrics["config_fingerprint"]
    # each specialist measures forgetting on its own base's data
    assert by_stage["support"]["references"] == ["builtin_docs"] and by_stage["legal_sft"]["references"] == ["builtin_licenses"]
    assert summary["stage_order"] == ["general", "legal", "support", "legal_sft"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| | `general` | `legal` | `support` | `legal_sft` |" in report  # one report compares the branches
    assert "| starts from | its config (random weights) | stage `general` | stage `general` | stage `legal` |" in report


def test_a_rerun_keeps_the_finished_branches_and_resumes_the_unfinished_one(recorder, tmp_path, caplog):
    crashed = recorder(crash="support")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    assert [c["stage"] for c in crashed.calls] == ["general", "legal", "support"]  # killed in the support branch
    legal = (tmp_path / "run" / "legal" / "metrics.json").read_text()

    caplog.set_level("INFO", logger="ptft_hf.pipeline")
    again = recorder()
    _run(tmp_path / "run")
    assert [c["stage"] for c in again.calls] == ["support", "legal_sft"]  # general and legal are kept
    assert "pipeline stage 'support' trains: its run is unfinished: it resumes from its latest checkpoint" in caplog.text
    assert "pipeline stage 'legal_sft' trains: it has not run yet" in caplog.text
    assert again.calls[0]["resume"] is not False  # resumed, not restarted
    assert (tmp_path / "run" / "legal" / "metrics.json").read_text() == legal  # untouched


def test_a_changed_branch_trains_again_with_what_is_built_on_it_and_nothing_else(recorder, tmp_path, caplog):
    recorder()
    _run(tmp_path / "run")
    changed = ["stages.legal.extra=['trainer.max_steps=7']"]
    with pytest.raises(UserError) as err:  # without overwrite: refused, one line, nothing written
        _run(tmp_path / "run", *changed)
    assert [p.field for p in err.value.problems] == ["stages.legal"]
    assert "and the stages built on it (legal_sft); general, support kept as they are" in str(err.value.problems[0])
    fake = recorder()
    _run(tmp_path / "run", *changed, "overwrite=true")
    assert [c["stage"] for c in fake.calls] == ["legal", "legal_sft"]


def test_stage_ancestors_follow_init_from_to_the_root():
    stages = ptft_hf.compose(*TREE).cfg.stages
    from omegaconf import OmegaConf

    typed = OmegaConf.to_object(stages)
    assert stage_ancestors("legal_sft", typed) == ["legal", "general"]
    assert stage_ancestors("support", typed) == ["general"] and stage_ancestors("general", typed) == []


def _stage(objective: str, data: str, base: str | None, accuracy: float, random_init: bool = False) -> dict:
    return {"objective": objective, "strategy": "full", "data": data, "random_init": random_init,
            "base_model": f"/runs/{base}/model" if base else None,
            "lineage": {"init_from_stage": base, "base_run_dir": f"/runs/{base}", "base_config_sha256": "ab" * 32} if base else {},
            "data_train": {"documents": 10, "tokens": 100}, "train_flops_estimate": 1e9 if base else 4e9,
            "trainable_parameters": 10, "trainable_percent": 100.0, "eval_accuracy": accuracy,
            "majority_accuracy": 0.362, "majority_label": "INHIBITOR"}


def test_the_report_weighs_each_base_a_control_and_the_domain_stage(tmp_path):
    """The medical branch's comparisons: ChemProt from the domain-adapted model, from the general
    one (no domain stage) and from random weights (the control)."""
    from ptft_hf.pipeline.report import write_pipeline_report

    stages = {"general": {**_stage("clm", "wikitext2", None, 0.3), "eval_perplexity": 90.0},
              "medical": {**_stage("clm", "medical_abstracts", "general", 0.3), "eval_perplexity": 40.0},
              "chemprot": _stage("classification", "chemprot", "medical", 0.61),
              "chemprot_general": _stage("classification", "chemprot", "general", 0.58),
              "chemprot_control": _stage("classification", "chemprot", "general", 0.35, random_init=True)}
    for m in stages.values():
        if m["objective"] == "clm":
            del m["eval_accuracy"], m["majority_accuracy"], m["majority_label"]
    report = write_pipeline_report(tmp_path, {"stages": stages, "wall_time_s": 10.0}, {}).read_text()
    assert ("- value of pretraining, accuracy (higher is better): `chemprot` 0.61 vs `chemprot_control` (same data "
            "from random weights) 0.35: +0.2600") in report
    assert ("- the same fine-tuning from two bases, accuracy (higher is better): `chemprot` (from `medical`) 0.61 vs "
            "`chemprot_general` (from `general`) 0.58: +0.0300") in report
    assert "| purpose | pretraining | continued pretraining | fine-tuning | fine-tuning | control (random weights) |" in report
    assert "majority class: accuracy 0.362 (**not beaten**)" in report  # the control did not beat it
    # a stage with its interval and its training's course: the interval decides, the warnings are repeated
    stages["chemprot_control"].update(eval_accuracy=0.37, eval_accuracy_ci=[0.353, 0.386], training_progress={
        "epochs": 0.5, "first_loss": 2.6, "last_loss": 2.55, "uniform_loss": 2.565, "slope_per_100_steps": -0.01,
        "slope_stderr": 0.02, "noise": 0.05, "still_falling": False, "learned_nothing": True, "stopped_early": False})
    report = write_pipeline_report(tmp_path, {"stages": stages, "wall_time_s": 10.0}, {}).read_text()
    assert "majority class: accuracy 0.362 (**not beaten** beyond chance: 95% interval 0.353-0.386)" in report
    assert ("- against the baseline: accuracy 0.37 (95% interval 0.353-0.386, Wilson) vs majority 0.362: not beaten beyond "
            "chance") in report
    assert ("- training: training covered 0.50 epochs; training loss 2.6 -> 2.55 (-0.05); -0.015 from the uniform "
            "guess's 2.565") in report
    assert "- **Warning: the training loss never left the uniform guess: 2.55 at the end against 2.565" in report
    assert "| est. training FLOPs (x `general`) | 4e+09 | 1e+09 (0.25x) |" in report


def test_a_stage_added_to_a_finished_tree_runs_alone(recorder, tmp_path):
    recorder()
    _run(tmp_path / "run")
    conf = Path(TREE[0].split("file://", 1)[1].rstrip("]"))
    (conf / "experiment" / "tree.yaml").write_text(TREE_YAML + "  legal_control: {init_from: general, data: builtin_licenses, "
                                                   "strategy: lora, extra: [model.random_init=true]}\n")
    fake = recorder()
    summary = _run(tmp_path / "run")  # no overwrite needed: nothing finished is trained over
    assert [c["stage"] for c in fake.calls] == ["legal_control"]
    assert summary["stages_kept"] == ["general", "legal", "support", "legal_sft"]
    assert (tmp_path / "run" / "report.md").read_text().splitlines()[2].startswith(
        "5 stages: this run trained 1 in ")  # and kept 4: the report says what all five took


def test_replay_on_a_stage_without_a_base_is_refused_before_anything_runs(recorder, tmp_path):
    fake = recorder()
    conf = Path(TREE[0].split("file://", 1)[1].rstrip("]"))
    (conf / "experiment" / "tree.yaml").write_text(TREE_YAML + "  other_root: {data: builtin_licenses, extra: [data.replay=0.2]}\n")
    with pytest.raises(UserError) as err:
        _run(tmp_path / "run")
    assert [str(p) for p in err.value.problems] == [
        "stages.other_root: data.replay: needs a base stage to replay, and this stage has no init_from; set init_from to "
        "the stage whose data it replays, or drop data.replay"]
    assert fake.calls == []


def test_the_report_sets_a_replayed_stage_beside_its_twin_without_replay(tmp_path):
    """legal (20% of its tokens replayed from general's WikiText-2) and legal_no_replay: the same
    stage otherwise, so the difference in general perplexity is what replay saved; the control
    (random weights) is compared with the stage whose data, replay included, it shares."""
    from ptft_hf.pipeline.report import write_pipeline_report

    def legal(replay: float, general_after: float, own_after: float, random_init: bool = False) -> dict:
        m = {**_stage("clm", "licenses", "general", 0.3, random_init), "eval_perplexity_before": 9000.0,
             "eval_perplexity": own_after, "eval_wikitext2_perplexity_before": 145.0 if not random_init else 8000.0,
             "eval_wikitext2_perplexity": general_after,
             "data_mixture": {"licenses": {"weight": 1.0 - replay}, **({"replay_wikitext2": {"weight": replay}} if replay else {})}}
        del m["eval_accuracy"], m["majority_accuracy"], m["majority_label"]
        return m

    stages = {"general": {**_stage("clm", "wikitext2", None, 0.3), "eval_perplexity": 145.0},
              "legal": legal(0.2, 159.5, 70.0), "legal_no_replay": legal(0.0, 174.0, 66.0),
              "legal_control": legal(0.2, 7000.0, 72.0, random_init=True)}
    del stages["general"]["eval_accuracy"], stages["general"]["majority_accuracy"]
    report = write_pipeline_report(tmp_path, {"stages": stages, "wall_time_s": 10.0}, {}).read_text()
    replay_lines = [line for line in report.splitlines() if line.startswith("- replay against forgetting")]
    assert replay_lines == [
        "- replay against forgetting, wikitext2 perplexity (lower is better): `legal` (20% replayed) 145 → 159.5 (+10.0%) "
        "vs `legal_no_replay` (no replay) 145 → 174 (+20.0%); own eval perplexity 9000 → 70 vs perplexity 9000 → 66"]
    assert "| data | wikitext2 | licenses (+ 20% replay_wikitext2) | licenses | licenses (+ 20% replay_wikitext2) |" in report
    # the control is the same fine-tuning, replay included: legal_no_replay (other data) is not set against it
    assert [line for line in report.splitlines() if line.startswith("- value of pretraining")] == [
        "- value of pretraining, perplexity (lower is better): `legal` 70 vs `legal_control` (same data from random weights) 72: -2.0000"]


def test_the_report_names_how_a_control_was_trained_when_it_is_not_the_stages_recipe(tmp_path):
    """support_control is support's recipe from random weights; support_control_tuned has the
    recipe that suits random weights: its line names each setting that differs, so a reader
    never takes a tuned control for the same fine-tuning."""
    from ptft_hf.config.schema import StageConfig
    from ptft_hf.pipeline.report import write_pipeline_report

    recipe = ["trainer.learning_rate=1e-3", "trainer.num_train_epochs=6", "+model.config.resid_pdrop=0.1",
              "trainer.label_smoothing_factor=0.1"]
    configs = {
        "support": StageConfig(init_from="general", objective="classification", data="banking77", overrides=recipe),
        "support_control": StageConfig(init_from="general", objective="classification", data="banking77",
                                       overrides=recipe, extra=["model.random_init=true"]),
        "support_control_tuned": StageConfig(
            init_from="general", objective="classification", data="banking77", overrides=recipe,
            extra=["model.random_init=true", "trainer.learning_rate=3e-4", "model.config.resid_pdrop=0.0"]),
    }
    stages = {"support": _stage("classification", "banking77", "general", 0.888),
              "support_control": _stage("classification", "banking77", "general", 0.863, random_init=True),
              "support_control_tuned": _stage("classification", "banking77", "general", 0.895, random_init=True)}
    report = write_pipeline_report(tmp_path, {"stages": stages, "wall_time_s": 10.0}, configs).read_text()
    assert [line for line in report.splitlines() if line.startswith("- value of pretraining")] == [
        "- value of pretraining, accuracy (higher is better): `support` 0.888 vs `support_control` (same data from "
        "random weights) 0.863: +0.0250",
        "- value of pretraining, accuracy (higher is better): `support` 0.888 vs `support_control_tuned` (same data from "
        "random weights; its own recipe: trainer.learning_rate=3e-4 (vs 1e-3), model.config.resid_pdrop=0.0 (vs 0.1)) "
        "0.895: -0.0070"]
