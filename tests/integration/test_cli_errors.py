"""User mistakes through the real CLI: one line naming the field and the fix, exit 2, no traceback,
nothing written over an earlier run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.integration


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ptft-hf: error:")]


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing-file", "data.path: no file at"),
        ("empty-file", "data.path: "),
        ("unknown-option", "model=tiny_gtp2: no such option in group 'model'; choose one of: "),
        ("unknown-key", "objective.block_sise: unknown key; valid keys: name, block_size"),
        ("unknown-trainer-key", "trainer.learning_rat: is not a TrainingArguments field; did you mean learning_rate"),
        ("missing-required", "data.path: is required by data=text_files"),
    ],
)
def test_mistake_gives_one_line_and_exit_2(case, expected, cache_env, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = {
        "missing-file": ["data=text_files", f"data.path={tmp_path / 'nope.txt'}"],
        "empty-file": ["data=text_files", f"data.path={empty}"],
        "unknown-option": ["model=tiny_gtp2"],
        "unknown-key": ["objective.block_sise=64"],
        "unknown-trainer-key": ["trainer.learning_rat=1e-3"],
        "missing-required": ["data=text_files"],
    }[case]
    result = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = _errors(result.stderr)
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_verbose_shows_the_traceback(cache_env, tmp_path):
    result = run_cli(["data=text_files", f"data.path={tmp_path / 'nope.txt'}", "verbose=true",
                      f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UserError" in result.stderr


def test_finished_run_is_not_overwritten(cache_env, tmp_path):
    run_dir = tmp_path / "done"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    result = run_cli(["data=builtin_docs", *TINY_OVERRIDES, f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds a finished run; choose another folder or add overwrite=true" in _errors(result.stderr)[0]
    assert json.loads((run_dir / "metrics.json").read_text()) == {"eval_loss": 1.0}
    assert not (run_dir / "model").exists()
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1\n"  # Hydra's record untouched too
