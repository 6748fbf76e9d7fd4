"""Several processes through torchrun (DDP over gloo, one thread each): the same Hydra command
writes one run folder, and trains what a single process with the same global batch trains.

Rank 1's clock runs an hour ahead (a `sitecustomize` on its PYTHONPATH skews the clock Hydra's
`${now:...}` reads, as on a node whose clock is off), so the two ranks would resolve the default
folder `outputs/<date>/<time>` differently unless they agree on rank 0's clock (`ptft_hf.distributed`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ptft_hf.paths import conf_dir
from tests.conftest import PLANTED_TOKEN, QUICKSTART_RUN, launched
from tests.integration.distributed_helpers import (KILL_JOB_AT_SAVE, RUN, assert_same_training, free_port, reloaded_sample,
                                                   torchrun)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


def test_a_killed_two_process_job_in_its_default_folder_resumes_to_the_same_weights(single_process_run, cache_env,
                                                                                    tmp_path):
    """Global batch 2 x 4 = 8, rank 1's clock an hour ahead: the ranks write one folder, the default
    `outputs/<date>/<time>`; the whole job killed right after checkpoint 5 (as a scheduler ends
    it) resumes with the same command in that folder to the single process's training."""
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SKEWED_RANK_1 + KILL_JOB_AT_SAVE)
    env = dict(cache_env, OMP_NUM_THREADS="1", PTFT_HF_OUTPUTS=str(tmp_path / "outputs"))
    hooked = dict(env, PYTHONPATH=f"{tmp_path / 'hooks'}{os.pathsep}{env['PYTHONPATH']}")
    killed = torchrun([*RUN, "trainer.per_device_train_batch_size=4"], dict(hooked, PTFT_TEST_KILL_AT_STEP="5"), tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    [run_dir] = list((tmp_path / "outputs").glob("*/*"))  # one folder, the default outputs/<date>/<time>
    assert (run_dir / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file()
    assert not (run_dir / "metrics.json").exists()

    resumed = torchrun([*RUN, "trainer.per_device_train_batch_size=4", f"hydra.run.dir={run_dir}"], hooked, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [".hydra", "checkpoints", "cli.log", "cli.rank1.log", "config.yaml", "loss.png", "metrics.json",
                     "model", "report.md", "samples.jsonl", "train_log.jsonl"]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] == 5
    assert f"run folder {run_dir}" in (run_dir / "cli.log").read_text()
    assert "run folder" not in resumed.stdout.replace(f"run folder {run_dir}", "", 1)  # logged once, by rank 0
    assert_same_training(run_dir, single_process_run)


def test_a_sweep_over_two_nodes_runs_every_job_on_both_and_trains_like_one_process(single_process_run, cache_env,
                                                                                  tmp_path):
    """`torchrun --nnodes 2 --nproc_per_node 1 ... -m ptft_hf -m trainer.learning_rate=a,b`: two
    torchrun agents as two nodes (c10d rendezvous on 127.0.0.1), both started here; Hydra's sweep
    runs job after job on every rank, the ranks agree on the sweep folder (`${now}`) and each job's
    subfolder, rank 0 writes the summary, and job 0 (the reference's own learning rate) trains
    what one process with the global batch trains."""
    rate = yaml.safe_load((single_process_run / "config.yaml").read_text())["trainer"]["learning_rate"]
    endpoint = f"127.0.0.1:{free_port()}"
    worker, env = launched(dict(cache_env, OMP_NUM_THREADS="1", PTFT_HF_MULTIRUN=str(tmp_path / "multirun")))
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                               "--rdzv_id", "ptft-test", *worker, "-m", f"trainer.learning_rate={rate},3e-4", *RUN,
                               "trainer.per_device_train_batch_size=4"],
                              env=env, cwd=tmp_path, stdout=(tmp_path / f"node{rank}.out").open("w"), stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], "".join((tmp_path / f"node{r}.out").read_text()[-2000:] for r in (0, 1))
    [sweep] = list((tmp_path / "multirun").glob("*/*"))  # one folder, the default multirun/<date>/<time>
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", "summary.json", "summary.md", "summary.png"]
    for job, job_rate in (("0", rate), ("1", 3e-4)):
        assert sorted(p.name for p in (sweep / job).glob("cli*.log")) == ["cli.log", "cli.rank1.log"]
        assert yaml.safe_load((sweep / job / "config.yaml").read_text())["trainer"]["learning_rate"] == job_rate
        assert json.loads((sweep / job / "metrics.json").read_text())["train_steps"] == 10
    assert [r["job"] for r in json.loads((sweep / "summary.json").read_text())] == ["0", "1"]
    assert_same_training(sweep / "0", single_process_run)


def test_the_quickstart_pipeline_under_fsdp_matches_the_single_process_one(quickstart_run, cache_env, tmp_path):
    """Both stages under torchrun with FSDP2 (`distributed=fsdp`; 2 x 4 rows per step, the shared
    single-process pipeline's 8): full pretraining, then LoRA on the sharded base; one folder, one
    report, the lineage intact, sharded checkpoints, the adapter alone saved, and each stage's model
    as the single process trained it (the sample its end wrote is the one model/ gives, loaded whole)."""
    args = [a.replace("trainer.per_device_train_batch_size=8", "trainer.per_device_train_batch_size=4") for a in QUICKSTART_RUN]
    assert args != QUICKSTART_RUN
    run_dir = tmp_path / "run"
    result = torchrun([*args, "distributed=fsdp", f"hydra.run.dir={run_dir}"],
                      dict(cache_env, OMP_NUM_THREADS="1", HF_TOKEN=PLANTED_TOKEN), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "cli.log", "cli.rank1.log", "finetune", "metrics.json",
                                                         "pretrain", "report.html", "report.md"]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["stage_order"] == ["pretrain", "finetune"] and summary["stages_trained"] == ["pretrain", "finetune"]
    assert (run_dir / "report.md").read_text().count("## pretrain\n") == 1
    pretrain, finetune = (json.loads((run_dir / s / "metrics.json").read_text()) for s in ("pretrain", "finetune"))
    assert finetune["lineage"]["base_config_sha256"] == pretrain["config_fingerprint"]
    assert finetune["base_model"] == str((run_dir / "pretrain" / "model").resolve())
    for stage, weights in (("pretrain", "model.safetensors"), ("finetune", "adapter_model.safetensors")):
        ours, reference = (load_file(d / stage / "model" / weights) for d in (run_dir, quickstart_run))
        assert ours.keys() == reference.keys(), stage  # the tied output embedding once, as one process saves it
        for name in reference:
            # measured: 1.9e-5 after 40 pretraining steps at lr 3e-3 (the all-reduced sum of two half-batch
            # gradients rounds differently from one full batch), 3e-7 for the adapter
            torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-4, msg=f"{stage}: {name}")
        want = json.loads((quickstart_run / stage / "metrics.json").read_text())
        got = json.loads((run_dir / stage / "metrics.json").read_text())
        assert got["eval_tokens"] == want["eval_tokens"] and got["train_tokens"] == want["train_tokens"], stage
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5), stage
        assert got["trainable_parameters"] == want["trainable_parameters"], stage
        # FSDP's own checkpoints: a shard of the weights per rank, not one model file
        assert (run_dir / stage / "checkpoints" / f"checkpoint-{got['train_steps']}" / "pytorch_model_fsdp_0").is_dir()
    adapter = load_file(run_dir / "finetune" / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)  # the adapter alone, not the base
    assert reloaded_sample(run_dir / "finetune") == finetune["sample"]


def test_a_config_mistake_under_torchrun_is_one_line_and_torchruns_root_cause(cache_env, tmp_path):
    """A mistake Hydra's composition finds (each rank, before any heavy import); a value the checks
    refuse goes through the same report (`cli.report_user_error`), tested per rank in tests/unit/test_distributed_checks.py."""
    result = torchrun(["model=tiny_gtp2", f"hydra.run.dir={tmp_path / 'run'}"], dict(cache_env, OMP_NUM_THREADS="1"),
                      tmp_path)
    assert result.returncode != 0
    models = ", ".join(sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml")))
    line = f"ptft-hf: error: model=tiny_gtp2: no such option in group 'model'; choose one of: {models}"
    assert [l for l in result.stderr.splitlines() if l.startswith("ptft-hf:")] == [  # rank 0 alone prints it
        line, "ptft-hf: (add verbose=true to see the traceback)"]
    root_cause = result.stderr.split("Root Cause (first observed failure):")[1]
    assert f"traceback : {line}" in root_cause  # torchrun's summary shows the worker's error file
    assert "To enable traceback see" not in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()
