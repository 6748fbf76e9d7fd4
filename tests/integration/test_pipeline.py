"""The two-stage pipeline, the strategy sweep and the merge command through the real CLIs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

TINY_MODEL = "['model.config.n_layer=1','model.config.n_head=2','model.config.n_embd=64','model.tokenizer.vocab_size=512']"
SHARED = ["objective.block_size=32", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=5",
          "trainer.warmup_steps=2", "trainer.disable_tqdm=true", "samples.max_new_tokens=8",
          "data.max_eval_samples=60"]


PIPELINE = ["experiment=quickstart", f"stages.pretrain.extra={TINY_MODEL}",
            "stages.pretrain.overrides=['trainer.max_steps=40','trainer.learning_rate=3e-3','trainer.eval_steps=20','trainer.save_steps=20']",
            "stages.finetune.overrides=['trainer.max_steps=30','trainer.learning_rate=5e-3','trainer.eval_steps=15','trainer.save_steps=15']",
            *SHARED]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, cache_env):
    root = tmp_path_factory.mktemp("pipeline")
    result = run_cli([*PIPELINE, f"hydra.run.dir={root / 'run'}"], cache_env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "run"


def test_stage_two_starts_from_stage_one_and_records_its_lineage(pipeline_run):
    _, run_dir = pipeline_run
    pretrain = json.loads((run_dir / "pretrain" / "metrics.json").read_text())
    finetune = json.loads((run_dir / "finetune" / "metrics.json").read_text())
    assert (pretrain["strategy"], finetune["strategy"]) == ("full", "lora")
    assert finetune["base_model"] == str((run_dir / "pretrain" / "model").resolve())
    stage_one_cfg = OmegaConf.load(run_dir / "pretrain" / "config.yaml")
    assert len(finetune["lineage"]["base_config_sha256"]) == 64
    assert finetune["lineage"]["base_run_dir"] == str((run_dir / "pretrain").resolve())
    assert stage_one_cfg.model.name == "tiny_gpt2" and stage_one_cfg.model.config.n_embd == 64
    # general perplexity before fine-tuning is stage 1's own final eval: same model, same eval data
    assert finetune["eval_builtin_docs_perplexity_before"] == pytest.approx(pretrain["eval_perplexity"], rel=1e-5)
    assert finetune["eval_perplexity"] < finetune["eval_perplexity_before"]
    assert sorted(p.name for p in (run_dir / "finetune" / "model").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_after_a_crash_skips_the_finished_stage_and_resumes_the_other(pipeline_run, cache_env, tmp_path):
    """The state a crash in stage 2 after its checkpoint-15 leaves (no metrics.json there or at the
    top, no stage-2 model/); the same command again skips stage 1 and resumes stage 2."""
    _, finished = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    for path in ("metrics.json", "report.md", "finetune/metrics.json", "finetune/report.md", "finetune/loss.png"):
        (run_dir / path).unlink()
    for path in ("finetune/model", "finetune/checkpoints/checkpoint-30"):
        shutil.rmtree(run_dir / path)
    pretrain = _hashes(run_dir / "pretrain")
    result = run_cli([*PIPELINE, f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)
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


def test_strategy_sweep_compares_all_four(pipeline_run, cache_env):
    root, run_dir = pipeline_run
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
def test_merge_command(pipeline_run, cache_env, case):
    _, run_dir = pipeline_run
    target = run_dir / ("finetune" if case == "adapter" else "pretrain")
    result = subprocess.run([sys.executable, "-m", "ptft_hf.hub.cli", str(target)], env=cache_env,
                            capture_output=True, text=True, timeout=300)
    if case == "full-model":
        assert result.returncode == 2
        assert result.stderr.strip().endswith("holds a full model, not an adapter; nothing to merge: use its model/ folder as it is")
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert "largest logit difference" in result.stdout
    assert (target / "merged" / "model.safetensors").is_file()
    digest = hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest()
    again = subprocess.run([sys.executable, "-m", "ptft_hf.hub.cli", str(target)], env=cache_env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is not empty; choose another folder or add --overwrite" in again.stderr
    assert hashlib.sha256((target / "merged" / "model.safetensors").read_bytes()).hexdigest() == digest
