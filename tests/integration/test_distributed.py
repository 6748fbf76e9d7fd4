"""Several processes through torchrun (DDP over gloo, one thread each): the same Hydra command
writes one run folder, and trains what a single process with the same global batch trains.

Rank 1's clock runs an hour ahead (a `sitecustomize` on its PYTHONPATH skews the clock Hydra's
`${now:...}` reads, as on a node whose clock is off), so the two ranks would resolve the default
folder `outputs/<date>/<time>` differently unless they agree on rank 0's clock (`ptft_hf.distributed`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = ["data=builtin_docs", "data.max_train_samples=300", "data.max_eval_samples=40", *TINY_OVERRIDES,
       "trainer.max_steps=10", "trainer.eval_steps=5", "trainer.save_steps=5", "trainer.logging_steps=1"]
SKEWED_RANK_1 = """
import datetime, os
if os.environ.get("RANK") == "1":
    import hydra.core.utils


    class Skewed(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.now(tz) + datetime.timedelta(hours=1)


    hydra.core.utils.datetime = Skewed
"""


def _torchrun(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ptft_hf", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_two_processes_write_one_folder_and_train_like_one_process(cache_env, tmp_path):
    single = run_cli([*RUN, "trainer.per_device_train_batch_size=8", f"hydra.run.dir={tmp_path / 'single'}"],
                     dict(cache_env, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]

    (tmp_path / "skewed").mkdir()
    (tmp_path / "skewed" / "sitecustomize.py").write_text(SKEWED_RANK_1)
    env = dict(cache_env, OMP_NUM_THREADS="1", PTFT_HF_OUTPUTS=str(tmp_path / "outputs"),
               PYTHONPATH=f"{tmp_path / 'skewed'}{os.pathsep}{cache_env['PYTHONPATH']}")
    result = _torchrun([*RUN, "trainer.per_device_train_batch_size=4"], env, tmp_path)  # global batch 2 x 4 = 8
    assert result.returncode == 0, result.stderr[-3000:]

    [run_dir] = list((tmp_path / "outputs").glob("*/*"))  # one folder, the default outputs/<date>/<time>
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [".hydra", "checkpoints", "cli.log", "cli.rank1.log", "config.yaml", "loss.png", "metrics.json",
                     "model", "report.md", "samples.jsonl", "train_log.jsonl"]
    assert f"run folder {run_dir}" in (run_dir / "cli.log").read_text()
    assert "run folder" not in result.stdout.replace(f"run folder {run_dir}", "", 1)  # logged once, by rank 0

    ours, reference = (load_file(d / "model" / "model.safetensors") for d in (run_dir, tmp_path / "single"))
    assert ours.keys() == reference.keys()
    for name in reference:  # measured: largest difference 4e-7
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-5, msg=name)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, tmp_path / "single"))
    for key in ("train_tokens", "eval_tokens", "data_train", "data_eval", "train_steps"):
        assert got[key] == want[key], key
    for key in ("eval_loss", "eval_loss_before", "eval_accuracy", "train_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
