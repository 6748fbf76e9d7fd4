"""The two-stage pipeline, the strategy sweep and the merge command through the real CLIs; pipeline
re-runs (which stages are kept, which train again) in-process where the CLI is not what is tested."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import PLANTED_TOKEN, QUICKSTART_RUN, QUICKSTART_SHARED, TINY_OVERRIDES, copy_run, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARED = QUICKSTART_SHARED


@pytest.fixture(scope="module")
def pipeline_run(quickstart_run):
    """The session's shared quickstart pipeline (tests/conftest.py QUICKSTART_RUN)."""
    return quickstart_run.parent, quickstart_run


def test_stage_two_starts_from_stage_one_and_records_its_lineage(pipeline_run):
    _, run_dir = pipeline_run
    pretrain = json.loads((run_dir / "pretrain" / "metrics.json").read_text())
    finetune = json.loads((run_dir / "finetune" / "metrics.json").read_text())
    assert (pretrain["strategy"], finetune["strategy"]) == ("full", "lora")
    assert finetune["base_model"] == str((run_dir / "pretrain" / "model").resolve())
    stage_one_cfg = OmegaConf.load(run_dir / "pretrain" / "config.yaml")
    # the lineage names the base stage's own config fingerprint, the one its metrics.json records
    assert finetune["lineage"]["base_config_sha256"] == pretrain["config_fingerprint"] == _composed_stage_fingerprint("pretrain")
    assert finetune["lineage"]["base_run_dir"] == str((run_dir / "pretrain").resolve())
    assert stage_one_cfg.model.name == "tiny_gpt2" and stage_one_cfg.model.config.n_embd == 64
    # general perplexity before fine-tuning is stage 1's own final eval: same model, same eval data
    assert finetune["eval_builtin_docs_perplexity_before"] == pytest.approx(pretrain["eval_perplexity"], rel=1e-5)
    assert finetune["eval_perplexity"] < finetune["eval_perplexity_before"]
    assert sorted(p.name for p in (run_dir / "finetune" / "model").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def _composed_stage_fingerprint(stage: str) -> str:
    """config_fingerprint of a stage as the pipeline composes it from QUICKSTART_RUN."""
    import ptft_hf
    from ptft_hf.pipeline import compose_stages, config_fingerprint, shared_overrides

    experiment = ptft_hf.compose(*QUICKSTART_RUN)
    return config_fingerprint(compose_stages(experiment.cfg, Path("unused"), shared_overrides(list(QUICKSTART_RUN)))[stage])


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_after_a_crash_skips_the_finished_stage_and_resumes_the_other(pipeline_run, cache_env, tmp_path):
    """The state a crash in stage 2 after its checkpoint-15 leaves (no metrics.json there or at the
    top, no stage-2 model/); the same command again skips stage 1 and resumes stage 2."""
    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    for path in ("metrics.json", "report.md", "finetune/metrics.json", "finetune/report.md", "finetune/loss.png"):
        (run_dir / path).unlink()
    for path in ("finetune/model", "finetune/checkpoints/checkpoint-30"):
        shutil.rmtree(run_dir / path)
    pretrain = _hashes(run_dir / "pretrain")
    result = run_cli([*QUICKSTART_RUN, f"hydra.run.dir={run_dir}"], dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline stage 'pretrain' already finished" in result.stdout
    assert "pipeline stage 'finetune' trains: its run is unfinished: it resumes from its latest checkpoint" in result.stdout
    assert _hashes(run_dir / "pretrain") == pretrain  # not run again
    again, first = (json.loads((d / "finetune" / "metrics.json").read_text()) for d in (run_dir, finished))
    assert again["resumed_from_step"] == 15
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "finetune" / "model" / "adapter_model.safetensors").is_file()


# The quickstart's stage overrides (QUICKSTART_RUN) with fewer steps: a changed stage config.
PRETRAIN_SHORTER = ["trainer.max_steps=10", "trainer.learning_rate=3e-3", "trainer.eval_steps=5", "trainer.save_steps=10"]
FINETUNE_SHORTER = ["trainer.max_steps=10", "trainer.learning_rate=5e-3", "trainer.eval_steps=5", "trainer.save_steps=10"]


def _quickstart_with(pretrain: list[str] | None = None, finetune: list[str] | None = None) -> list[str]:
    """QUICKSTART_RUN with `stages.<stage>.overrides` replaced where given."""
    args = list(QUICKSTART_RUN)
    for stage, overrides in (("pretrain", pretrain), ("finetune", finetune)):
        if overrides is not None:
            i = next(i for i, a in enumerate(args) if a.startswith(f"stages.{stage}.overrides="))
            args[i] = f"stages.{stage}.overrides=[{','.join(repr(o) for o in overrides)}]"
    return args


def _run_in_process(args: list[str], run_dir: Path, overwrite: bool = True) -> dict:
    """The pipeline as the CLI runs it (compose, then run_pipeline with the shared overrides), in
    this process: no subprocess, no imports to pay again."""
    import ptft_hf
    from ptft_hf.pipeline import run_pipeline, shared_overrides

    experiment = ptft_hf.compose(*args, *(["overwrite=true"] if overwrite else []))
    return run_pipeline(experiment.cfg, run_dir, shared_overrides(list(args)))


@pytest.fixture
def stage_runs(monkeypatch):
    """Which stages `recipe.run` trained, and what the pipeline folder held when each started
    (a spy around the real function: nothing is replaced)."""
    import ptft_hf.recipe

    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)  # as the shared run was trained
    real, calls = ptft_hf.recipe.run, []

    def spy(cfg, run_dir, **kwargs):
        root = Path(run_dir).parent
        calls.append({"stage": Path(run_dir).name, "top": sorted(p.name for p in root.iterdir()),
                      "aside": sorted(p.name for p in (root / ".replaced").iterdir()) if (root / ".replaced").is_dir() else []})
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(ptft_hf.recipe, "run", spy)
    return calls


def test_overwrite_after_a_changed_stage_keeps_the_stages_before_it(pipeline_run, stage_runs, tmp_path, caplog):
    """Only stages.finetune changed: with overwrite=true pretrain is kept byte for byte (never set
    aside), finetune trains again with the new setting, the old finetune waits in .replaced/."""
    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    pretrain = _hashes(run_dir / "pretrain")
    with caplog.at_level("INFO", logger="ptft_hf.pipeline"):
        summary = _run_in_process(_quickstart_with(finetune=FINETUNE_SHORTER), run_dir)
    assert [c["stage"] for c in stage_runs] == ["finetune"]
    assert "pretrain" in stage_runs[0]["top"] and "finetune" not in stage_runs[0]["top"]  # kept in place
    assert stage_runs[0]["aside"] == ["finetune", "metrics.json", "report.html", "report.md"]  # the old ones, until the new pipeline finishes
    assert _hashes(run_dir / "pretrain") == pretrain
    assert not (run_dir / ".replaced").exists()
    log = caplog.text
    assert f"pipeline stage 'pretrain' already finished in {run_dir / 'pretrain'} with the same config: kept as it is" in log
    assert (f"pipeline stage 'finetune' trains: its config changed since the run in {run_dir / 'finetune'} "
            "(trainer.eval_steps: 15 -> 5, trainer.max_steps: 30 -> 10, trainer.save_steps: 15 -> 10)") in log

    metrics = json.loads((run_dir / "finetune" / "metrics.json").read_text())
    assert metrics["train_steps"] == 10 and metrics["resumed_from_step"] == 0
    assert yaml.safe_load((run_dir / "finetune" / "config.yaml").read_text())["trainer"]["max_steps"] == 10
    assert sorted(p.name for p in (run_dir / "finetune" / "checkpoints").iterdir()) == ["checkpoint-10"]
    assert metrics["lineage"]["base_config_sha256"] == json.loads((run_dir / "pretrain" / "metrics.json").read_text())["config_fingerprint"]
    top = json.loads((run_dir / "metrics.json").read_text())
    assert top == json.loads(json.dumps(summary, default=str))
    assert top["stage_order"] == ["pretrain", "finetune"]
    assert (top["stages_kept"], top["stages_trained"]) == (["pretrain"], ["finetune"])
    assert top["stages"]["pretrain"] == json.loads((run_dir / "pretrain" / "metrics.json").read_text())
    assert top["stages"]["finetune"]["train_steps"] == 10
    report = (run_dir / "report.md").read_text()
    assert "| | `pretrain` | `finetune` |" in report and report.count("## pretrain\n") == report.count("## finetune\n") == 1


def test_changed_stage_without_overwrite_is_refused_one_line_and_nothing_written(pipeline_run, cache_env, tmp_path):
    """The same change without overwrite, through the CLI: exit 2, one line naming the changed
    stage, and the folder (Hydra's record included) exactly as it was."""
    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    before = _hashes(run_dir), sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    result = run_cli([*_quickstart_with(finetune=FINETUNE_SHORTER), f"hydra.run.dir={run_dir}"],
                     dict(cache_env, HF_TOKEN=PLANTED_TOKEN), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptft-hf: error: ")]
    assert errors == [f"ptft-hf: error: stages.finetune: '{run_dir / 'finetune'}' holds a finished stage run with another "
                      "config; add overwrite=true to train it again; pretrain kept as it is, or choose another hydra.run.dir"]
    assert (_hashes(run_dir), sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))) == before


def test_overwrite_retrains_from_a_changed_first_stage_and_everything_when_nothing_changed(pipeline_run, stage_runs, tmp_path,
                                                                                          caplog):
    """(1) pretrain changed: both stages train again, finetune (its own config unchanged) from the
    new pretrain; (2) the same command again with overwrite=true: nothing changed, both train again."""
    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    args = _quickstart_with(pretrain=PRETRAIN_SHORTER)
    with caplog.at_level("INFO", logger="ptft_hf.pipeline"):
        _run_in_process(args, run_dir)
    assert [c["stage"] for c in stage_runs] == ["pretrain", "finetune"]
    assert "pipeline stage 'finetune' trains: its base stage 'pretrain' trains again" in caplog.text
    pretrain, finetune = (json.loads((run_dir / s / "metrics.json").read_text()) for s in ("pretrain", "finetune"))
    old_finetune = json.loads((finished / "finetune" / "metrics.json").read_text())
    assert pretrain["train_steps"] == 10 and finetune["train_steps"] == 30
    assert finetune["lineage"]["base_config_sha256"] == pretrain["config_fingerprint"] != old_finetune["lineage"]["base_config_sha256"]
    assert finetune["eval_builtin_docs_perplexity_before"] == pytest.approx(pretrain["eval_perplexity"], rel=1e-5)
    own, old_own = (yaml.safe_load((d / "finetune" / "config.yaml").read_text()) for d in (run_dir, finished))
    assert own["model"].pop("name_or_path") == str((run_dir / "pretrain" / "model").resolve())
    assert old_own["model"].pop("name_or_path") == str((finished / "pretrain" / "model").resolve())
    assert own.pop("overwrite") is True and old_own.pop("overwrite") is False
    assert old_own.pop("tracking")["dir"].endswith("quickstart/tracking") and own.pop("tracking")["backend"] == "auto"
    assert own == old_own  # its own config: unchanged but for where its base is (and the overwrite switch, the store)
    assert json.loads((run_dir / "metrics.json").read_text())["stages_trained"] == ["pretrain", "finetune"]

    stamps = {s: (run_dir / s / "metrics.json").stat().st_mtime_ns for s in ("pretrain", "finetune")}
    inodes = {s: (run_dir / s / "model").stat().st_ino for s in ("pretrain", "finetune")}
    stage_runs.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="ptft_hf.pipeline"):
        _run_in_process(args, run_dir)
    assert [c["stage"] for c in stage_runs] == ["pretrain", "finetune"]
    assert stage_runs[0]["aside"] == ["finetune", "metrics.json", "pretrain", "report.html", "report.md"]
    assert caplog.text.count("overwrite=true and no stage changed: every stage trains again") == 2
    for stage in ("pretrain", "finetune"):  # rewritten: new files, not the ones kept
        assert (run_dir / stage / "metrics.json").stat().st_mtime_ns > stamps[stage]
        assert (run_dir / stage / "model").stat().st_ino != inodes[stage]
    assert not (run_dir / ".replaced").exists()


def test_a_single_run_into_a_finished_pipeline_folder_is_refused(pipeline_run, tmp_path):
    """The folder guard lets a finished pipeline's folder through for a pipeline (which judges it
    stage by stage); a single run without overwrite is refused at once, before any work."""
    import ptft_hf
    from ptft_hf.errors import UserError

    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    before = _hashes(run_dir)
    with pytest.raises(UserError) as err:
        ptft_hf.run(["data=builtin_docs", "data.max_train_samples=50", "data.max_eval_samples=10", *TINY_OVERRIDES], run_dir)
    assert [str(p) for p in err.value.problems] == [
        f"run_dir: '{run_dir}' already holds a finished run; choose another folder or add overwrite=true"]
    assert _hashes(run_dir) == before and not (run_dir / ".replaced").exists()


@pytest.mark.parametrize("init_from, line", [
    ("stages.finetune.init_from=nope",
     "stages.finetune.init_from: 'nope' is not a stage of this pipeline (stages: pretrain, finetune); use one of: pretrain"),
    ("stages.pretrain.init_from=finetune",
     "stages.pretrain.init_from: 'finetune' comes after 'pretrain'; a stage starts from an earlier stage; "
     "remove it: this is the first stage (it starts from its model option)"),
])
def test_invalid_init_from_is_refused_before_anything_is_written(pipeline_run, tmp_path, init_from, line):
    """In-process (the CLI turns the UserError into exit 2 and this line): a fresh folder is not
    created, a finished pipeline given overwrite=true is left as it was."""
    import ptft_hf
    from ptft_hf.errors import UserError
    from ptft_hf.pipeline import run_pipeline, shared_overrides

    _, finished = pipeline_run
    copied = copy_run(finished, tmp_path / "run")
    before = _hashes(copied)
    for run_dir, overwrite in ((tmp_path / "fresh", []), (copied, ["overwrite=true"])):
        args = [*QUICKSTART_RUN, init_from, *overwrite]
        with pytest.raises(UserError) as err:
            run_pipeline(ptft_hf.compose(*args).cfg, run_dir, shared_overrides(args))
        assert [str(p) for p in err.value.problems] == [line]
    assert not (tmp_path / "fresh").exists()
    assert _hashes(copied) == before and not (copied / ".replaced").exists()


def test_a_finished_stage_after_one_that_trains_again_is_not_skipped(pipeline_run, tmp_path):
    """pretrain's run lost its metrics.json (unfinished: it resumes) while finetune's finished run
    is still there, built on the old pretrain: without overwrite that is refused, not skipped."""
    import ptft_hf
    from ptft_hf.errors import UserError
    from ptft_hf.pipeline import run_pipeline, shared_overrides

    _, finished = pipeline_run
    run_dir = copy_run(finished, tmp_path / "run")
    for path in ("metrics.json", "pretrain/metrics.json"):
        (run_dir / path).unlink()
    before = _hashes(run_dir)
    with pytest.raises(UserError) as err:
        run_pipeline(ptft_hf.compose(*QUICKSTART_RUN).cfg, run_dir, shared_overrides(list(QUICKSTART_RUN)))
    assert [str(p) for p in err.value.problems] == [
        f"stages.finetune: '{run_dir / 'finetune'}' holds a finished stage run, but its base stage 'pretrain' trains "
        "again; add overwrite=true to train it again too, or choose another hydra.run.dir"]
    assert _hashes(run_dir) == before


def test_pipeline_report_has_the_per_stage_table(pipeline_run):
    _, run_dir = pipeline_run
    report = (run_dir / "report.md").read_text()
    table = report.split("## Pretraining vs fine-tuning\n\n")[1].split("\n\n")[0].splitlines()
    assert table[0] == "| | `pretrain` | `finetune` |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table[2:]}
    assert rows["purpose"] == ["pretraining", "fine-tuning |"]
    assert rows["starts from"] == ["its config (random weights)", "stage `pretrain` |"]
    assert rows["parameters updated"][0].startswith("100.00%") and rows["general perplexity (forgetting)"][1].startswith("builtin_docs ")
    pretrain, finetune = (json.loads((run_dir / s / "metrics.json").read_text()) for s in ("pretrain", "finetune"))
    ratio = finetune["train_flops_estimate"] / pretrain["train_flops_estimate"]
    assert rows["est. training FLOPs (x `pretrain`)"][1] == f"{finetune['train_flops_estimate']:.3g} ({ratio:.2f}x) |"
    assert "general perplexity on builtin_docs" in report
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["stage_order"] == ["pretrain", "finetune"]


def test_shared_overrides_reach_every_stage(pipeline_run):
    _, run_dir = pipeline_run
    for stage in ("pretrain", "finetune"):
        cfg = yaml.safe_load((run_dir / stage / "config.yaml").read_text())
        assert cfg["objective"]["block_size"] == 32 and cfg["trainer"]["disable_tqdm"] is True


def test_strategy_sweep_compares_all_four(pipeline_run, cache_env, tmp_path):
    _, run_dir = pipeline_run
    root = tmp_path
    result = run_cli(
        ["-m", "strategy=full,lora,qlora,dora", "model=pretrained", f"model.name_or_path={run_dir / 'pretrain' / 'model'}",
         "data=builtin_licenses", *SHARED, "trainer.max_steps=4", "trainer.eval_steps=4", "trainer.save_steps=4",
         f"hydra.sweep.dir={root / 'sweep'}"],
        cache_env, cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((root / "sweep" / "summary.json").read_text())
    assert [r["strategy"] for r in rows] == ["full", "lora", "qlora", "dora"]
    full, lora, qlora, dora = rows
    assert full["trainable_percent"] == 100.0
    assert lora["trainable_parameters"] == qlora["trainable_parameters"] < dora["trainable_parameters"] < full["trainable_parameters"]
    assert "| job | overrides | strategy | trainable parameters | train loss |" in (root / "sweep" / "summary.md").read_text()


@pytest.mark.parametrize("case", ["adapter", "full-model"])
def test_merge_command(pipeline_run, case, tmp_path, capsys):
    """`ptft-hf-merge` through its main(argv), on a copy of the stage folder."""
    from ptft_hf.hub.cli import merge_main

    _, run_dir = pipeline_run
    target = copy_run(run_dir / ("finetune" if case == "adapter" else "pretrain"), tmp_path / case)
    status = merge_main([str(target)])
    captured = capsys.readouterr()
    if case == "full-model":
        assert status == 2
        assert [line for line in captured.err.splitlines() if line.startswith("ptft-hf-merge: error:")] == [
            f"ptft-hf-merge: error: run_dir: '{target}' holds a full model, not an adapter; nothing to merge: "
            "use its model/ folder as it is"]
        assert not (target / "merged").exists()
        return
    assert status == 0, captured.err[-2000:]
    assert f"merged model saved to {target / 'merged'}; largest logit difference" in captured.out
    assert (target / "merged" / "model.safetensors").is_file()
    digest = hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest()
    assert merge_main([str(target)]) == 2
    assert "is not empty; choose another folder or add --overwrite" in capsys.readouterr().err
    assert hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest() == digest
