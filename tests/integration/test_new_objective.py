"""An objective added by following the README ("Adding an objective"): one module and one YAML
outside ptft_hf (tests/integration/nsp_plugin/), declared as an installed package declares it (an
entry point in the `ptft_hf.objectives` group), then trained by the real `ptft-hf` command. Nothing
in ptft_hf/ or conf/ names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLUGIN = Path(__file__).parent / "nsp_plugin"


def _installed_plugin(root: Path) -> Path:
    """A dist-info folder declaring the entry point, as `pip install` of a package with
    `[project.entry-points."ptft_hf.objectives"] nsp = "nsp_objective"` would write it."""
    dist = root / "nsp_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nsp-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ptft_hf.objectives]\nnsp = nsp_objective\n")
    return root


def _env(cache_env: dict[str, str], site: Path) -> dict[str, str]:
    return {**cache_env, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), cache_env.get("PYTHONPATH", "")])}


def test_the_new_objective_trains_through_the_cli(tmp_path, cache_env):
    env = _env(cache_env, _installed_plugin(tmp_path / "site"))
    run_dir = tmp_path / "nsp"
    result = run_cli([f"hydra.searchpath=[file://{PLUGIN / 'conf'}]", "objective=nsp", "model=tiny_bert", "data=builtin_docs",
                      "data.max_train_samples=300", "data.max_eval_samples=60", "model.config.num_hidden_layers=1",
                      "model.config.hidden_size=32", "model.config.intermediate_size=64", "model.config.num_attention_heads=2",
                      "model.tokenizer.vocab_size=1000", "trainer.max_steps=20", "trainer.per_device_train_batch_size=16",
                      "trainer.eval_steps=20", "trainer.save_steps=20", "trainer.disable_tqdm=true",
                      "objective.options.negative_share=0.4", f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["objective"], metrics["negative_share"], metrics["train_steps"]) == ("nsp", 0.4, 20)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_accuracy_before" in metrics
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "random", "1": "next"}
    card = (run_dir / "model" / "README.md").read_text()
    assert "next-sentence classifier (text-classification)" in card  # the card asked the objective


def test_its_options_are_checked_before_any_work(tmp_path, cache_env):
    """A misspelt option and a value of the wrong kind: one line each, exit 2, no run folder."""
    env = _env(cache_env, _installed_plugin(tmp_path / "site"))
    run_dir = tmp_path / "refused"
    result = run_cli([f"hydra.searchpath=[file://{PLUGIN / 'conf'}]", "objective=nsp", "model=tiny_bert", "data=builtin_docs",
                      "+objective.options.negativ_share=0.3", "objective.options.negative_share=1.5",
                      f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "objective.options.negativ_share: is not an option of objective=nsp; use one of: negative_share" in result.stderr
    assert "objective.options.negative_share: 1.5 is not a share of the pairs; use a value such as 0.5" in result.stderr
    assert "Traceback" not in result.stderr and not (run_dir / "metrics.json").exists()


def test_nothing_in_the_package_names_it():
    for folder in ("ptft_hf", "conf"):
        hits = [p for p in (REPO_ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml") and
                ("nsp" in p.name or "NextSentence" in p.read_text(encoding="utf-8", errors="ignore"))]
        assert hits == [], hits
