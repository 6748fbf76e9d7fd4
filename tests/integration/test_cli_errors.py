"""User mistakes through the real CLI, one case per layer that turns a mistake into one line
naming the field and the fix, exit 2, no traceback, nothing written over an earlier run: Hydra's
composition (unknown option), validation of the composed config (missing field, a value the
optimizer refuses), the data check after the heavy imports (missing file), the guard on a
finished folder before Hydra writes into it, and `verbose=true` showing the traceback. Every other
bad input is checked in-process, exactly, in test_bad_inputs.py."""

from __future__ import annotations

import json

import pytest

from ptft_hf.paths import conf_dir
from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a CLI subprocess each


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ptft-hf: error:")]


@pytest.mark.parametrize(
    "case,expected",
    [
        ("unknown-option", "model=tiny_gtp2: no such option in group 'model'; choose one of: "
                           + ", ".join(sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml")))),
        ("missing-required", "data.path: is required by data=text_files (no data source is set); add data.path=FILE "
                             "(a file, glob or folder), data.hub_id=ID, or choose data=builtin_docs"),
        ("refused-value", "trainer.learning_rate: -1 is negative, which the optimizer refuses; set a positive value such as 3e-4"),
        ("missing-file", "data.path: no file at '{tmp}/nope.txt' (looked from {tmp}); point data.path= at an existing file, "
                         "glob or folder"),
    ],
)
def test_mistake_gives_one_line_and_exit_2(case, expected, cache_env, tmp_path):
    args = {
        "missing-file": ["data=text_files", f"data.path={tmp_path / 'nope.txt'}"],
        "unknown-option": ["model=tiny_gtp2"],
        "missing-required": ["data=text_files"],
        "refused-value": ["trainer.learning_rate=-1"],
    }[case]
    result = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = _errors(result.stderr)
    assert errors == [f"ptft-hf: error: {expected.format(tmp=tmp_path)}"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_verbose_shows_the_traceback(cache_env, tmp_path):
    result = run_cli(["data=text_files", f"data.path={tmp_path / 'nope.txt'}", "verbose=true",
                      f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # Hydra's own report of an exception it did not expect
    assert "Traceback" in result.stderr
    assert f"ptft_hf.errors.UserError: data.path: no file at '{tmp_path / 'nope.txt'}'" in result.stderr


def test_finished_run_is_not_overwritten(cache_env, tmp_path):
    run_dir = tmp_path / "done"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    result = run_cli(["data=builtin_docs", *TINY_OVERRIDES, f"hydra.run.dir={run_dir}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2
    assert _errors(result.stderr) == [f"ptft-hf: error: hydra.run.dir: '{run_dir}' already holds a finished run; "
                                      "choose another folder or add overwrite=true"]
    assert "Traceback" not in result.stderr
    assert json.loads((run_dir / "metrics.json").read_text()) == {"eval_loss": 1.0}
    assert not (run_dir / "model").exists()
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1\n"  # Hydra's record untouched too
