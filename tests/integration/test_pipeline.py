"""The two-stage pipeline, the strategy sweep and the merge command through the real CLIs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import PLANTED_TOKEN, QUICKSTART_RUN, QUICKSTART_SHARED, copy_run, run_cli

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
    assert finetune["lineage"]["base_config_sha256"] == _composed_stage_sha256("pretrain")
    assert finetune["lineage"]["base_run_dir"] == str((run_dir / "pretrain").resolve())
    assert stage_one_cfg.model.name == "tiny_gpt2" and stage_one_cfg.model.config.n_embd == 64
    # general perplexity before fine-tuning is stage 1's own final eval: same model, same eval data
    assert finetune["eval_builtin_docs_perplexity_before"] == pytest.approx(pretrain["eval_perplexity"], rel=1e-5)
    assert finetune["eval_perplexity"] < finetune["eval_perplexity_before"]
    assert sorted(p.name for p in (run_dir / "finetune" / "model").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def _composed_stage_sha256(stage: str) -> str:
    """config_sha256 of a stage as the pipeline composes it from QUICKSTART_RUN."""
    import ptft_hf
    from ptft_hf.pipeline import compose_stages, config_sha256, shared_overrides

    experiment = ptft_hf.compose(*QUICKSTART_RUN)
    return config_sha256(compose_stages(experiment.cfg, Path("unused"), shared_overrides(list(QUICKSTART_RUN)))[stage])


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
    assert _hashes(run_dir / "pretrain") == pretrain  # not run again
    again, first = (json.loads((d / "finetune" / "metrics.json").read_text()) for d in (run_dir, finished))
    assert again["resumed_from_step"] == 15
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "finetune" / "model" / "adapter_model.safetensors").is_file()


def test_pipeline_report_has_the_per_stage_table(pipeline_run):
    _, run_dir = pipeline_run
    report = (run_dir / "report.md").read_text()
    assert "| stage | objective | strategy | data | documents | tokens | wall time (s) | est. training FLOPs | parameters updated |" in report
    rows = [line for line in report.splitlines() if line.startswith("| pretrain |") or line.startswith("| finetune |")]
    assert len(rows) == 2 and "100.00%" in rows[0] and "builtin_docs:" in rows[1]
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
        assert captured.err.strip().endswith("holds a full model, not an adapter; nothing to merge: use its model/ folder as it is")
        assert not (target / "merged").exists()
        return
    assert status == 0, captured.err[-2000:]
    assert f"merged model saved to {target / 'merged'}; largest logit difference" in captured.out
    assert (target / "merged" / "model.safetensors").is_file()
    digest = hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest()
    assert merge_main([str(target)]) == 2
    assert "is not empty; choose another folder or add --overwrite" in capsys.readouterr().err
    assert hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest() == digest
