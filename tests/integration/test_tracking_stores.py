"""The experiment store and the views of the shared quickstart pipeline (tests/conftest.py
QUICKSTART_RUN, run with the default `tracking=auto` as a new user would): trackio's store read back
with trackio's own API and CLI, MLflow (SQLite) and W&B (offline) stores of the same stages read
back with theirs, `ptft-hf-compare` on it, and report.html in headless Chromium. Each tracker's
figures must equal metrics.json's. Nothing is mocked; no network is used (W&B runs offline)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ptft_hf.pipeline.report import seed_table_column
from ptft_hf.tracking import track_run
from ptft_hf.tracking.record import flat_numbers
from tests.browser import chromium, visit
from tests.conftest import PLANTED_TOKEN, cli_output, tracking_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STAGES = ["pretrain", "finetune"]


def _metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "metrics.json").read_text())


def _final(metrics: dict) -> dict[str, float]:
    return {f"final/{k}": v for k, v in flat_numbers(metrics).items()}


def _trackio(store: Path, *args: str) -> dict:
    """trackio's own command line (`trackio get ...`), on the store."""
    out = subprocess.run([sys.executable, "-m", "trackio.cli", *args, "--json"], env=dict(os.environ, TRACKIO_DIR=str(store)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.trackio
def test_the_quickstart_leaves_a_trackio_store_with_both_stages_their_lineage_and_metrics_json(quickstart_run):
    pytest.importorskip("trackio", reason="needs trackio (pip install '.[trackio]')")
    store, project = tracking_store(quickstart_run), f"{quickstart_run.parent.name}_{quickstart_run.name}"
    assert f"tracking: run 'finetune' of project '{project}' logged to trackio in {store} " \
           f"(TRACKIO_DIR={store} trackio show --project {project})" in cli_output(quickstart_run)
    # trackio's Python API (Api().runs) for the runs and their configs, in a process of its own: TRACKIO_DIR is read at import
    code = ("import json, trackio; print(json.dumps({r.name: r.config for r in trackio.Api().runs(%r)}))" % project)
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRACKIO_DIR=str(store)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    configs = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(configs) == STAGES
    pretrain, finetune = (_metrics(quickstart_run, s) for s in STAGES)
    lineage = configs["finetune"]["lineage"]
    assert lineage == finetune["lineage"] and lineage["init_from_stage"] == "pretrain"
    assert lineage["base_config_sha256"] == configs["pretrain"]["config_fingerprint"] == pretrain["config_fingerprint"]
    assert configs["finetune"]["config_fingerprint"] == finetune["config_fingerprint"]
    assert configs["finetune"]["init_from"] == "pretrain" and configs["pretrain"]["init_from"] is None
    assert configs["finetune"]["config"] == yaml.safe_load((quickstart_run / "finetune" / "config.yaml").read_text())
    stage_configs = {s: OmegaConf.create({"init_from": configs[s]["init_from"]}) for s in STAGES}
    assert configs["finetune"]["seed_table"] == seed_table_column("finetune", {s: _metrics(quickstart_run, s) for s in STAGES},
                                                                  stage_configs)
    assert configs["finetune"]["seed_table"]["parameters updated"] == \
        f"{finetune['trainable_percent']:.2f}% ({finetune['trainable_parameters']:,})"
    for stage, metrics in zip(STAGES, (pretrain, finetune)):
        run = _trackio(store, "get", "run", "--project", project, "--run", stage)
        snapshot = _trackio(store, "get", "snapshot", "--project", project, "--run", stage, "--step", str(run["last_step"]))
        logged = {name: values[-1]["value"] for name, values in snapshot["metrics"].items() if name.startswith("final/")}
        assert logged == _final(metrics)  # every number of metrics.json, exactly
        assert run["last_step"] == metrics["train_steps"]
    # the run was given a planted Hub token (trainer.hub_token, HF_TOKEN): none of it reached the store
    assert not [p for p in store.rglob("*") if p.is_file() and PLANTED_TOKEN.encode() in p.read_bytes()]


def _mlflow_runs(store: Path, project: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(project)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return {run.info.run_name: (run, client) for run in runs}


def _track_finetune(run_dir: Path, backend: str, store: Path) -> None:
    """The stage with a lineage (one is enough: each start of MLflow on a new store takes seconds)."""
    tracking = OmegaConf.create({"backend": backend, "dir": str(store), "project": None})
    assert track_run(run_dir / "finetune", tracking, "quickstart", "finetune", {"stage": "finetune"})


@pytest.mark.mlflow
def test_mlflow_sqlite_holds_the_stages_as_metrics_json_says(quickstart_run, tmp_path):
    pytest.importorskip("mlflow", reason="needs mlflow (pip install '.[mlflow]')")
    _track_finetune(quickstart_run, "mlflow", tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["mlflow.db"]
    runs = _mlflow_runs(tmp_path / "store", "quickstart")
    assert list(runs) == ["finetune"]
    metrics, (run, client) = _metrics(quickstart_run, "finetune"), runs["finetune"]
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("final/")} == _final(metrics)
    assert run.data.params["config_fingerprint"] == metrics["config_fingerprint"]
    assert run.data.params["config.seed"] == "42" and run.data.params["lineage.init_from_stage"] == "pretrain"
    logged = [json.loads(line) for line in (quickstart_run / "finetune" / "train_log.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert run.data.tags["ptft_hf.lineage.init_from_stage"] == "pretrain"
    assert run.data.tags["ptft_hf.lineage.base_config_sha256"] == _metrics(quickstart_run, "pretrain")["config_fingerprint"]


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline run's `.wandb` file, parsed with W&B's own protobuf schema
    (`wandb.proto.wandb_internal_pb2`). The file is a LevelDB-style log: a 7-byte header (`:W&B`,
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32C, length, type:
    1 whole, 2 first, 3 middle, 4 last). wandb 0.31 has no Python reader for it (its Go core syncs)."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("run-*.wandb")
    data, records, chunks, position = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # the block's tail is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += left
            continue
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


@pytest.mark.wandb
def test_wandb_offline_runs_hold_the_stages_as_metrics_json_says(quickstart_run, tmp_path):
    pytest.importorskip("wandb", reason="needs wandb (pip install '.[wandb]')")
    _track_finetune(quickstart_run, "wandb", tmp_path / "store")
    [run_dir] = sorted((tmp_path / "store" / "wandb").glob("offline-run-*"))
    records = _wandb_records(run_dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("quickstart", "finetune")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    metrics = _metrics(quickstart_run, "finetune")
    assert config["config_fingerprint"] == metrics["config_fingerprint"]
    assert config["lineage"] == metrics["lineage"] and metrics["lineage"]["init_from_stage"] == "pretrain"
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
    assert {k: v for k, v in summary.items() if k.startswith("final/")} == _final(metrics)


def test_compare_prints_the_runs_table_and_writes_their_loss_plot(quickstart_run, tiny_run, tmp_path, capsys):
    from ptft_hf.compare import main

    out = tmp_path / "losses.png"
    main([str(quickstart_run), str(tiny_run), "--metrics", "eval_perplexity,train_steps", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[:5]]
    assert rows[0] == ["run", "seed", "eval_perplexity", "train_steps"]
    runs = {"quickstart/run/pretrain": quickstart_run / "pretrain", "quickstart/run/finetune": quickstart_run / "finetune",
            "tiny/run": tiny_run}
    assert rows[2:] == [[label, "42", f"{json.loads((d / 'metrics.json').read_text())['eval_perplexity']:.4g}",
                         str(json.loads((d / "metrics.json").read_text())["train_steps"])] for label, d in runs.items()]
    assert lines[-1] == f"loss curves: {out}" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
def test_report_html_opens_from_disk_in_headless_chromium(quickstart_run, tmp_path):
    if chromium() is None:
        pytest.skip("needs Chromium (apt-get install -y chromium)")
    page = quickstart_run / "report.html"
    shot = tmp_path / "report.png"
    seen = visit(page.as_uri(), shot)
    assert [r for r in seen.requests if not r.startswith("data:")] == [page.as_uri()]  # the file, nothing outside it
    assert seen.console == []  # no console message, error or exception
    assert seen.stages == STAGES  # the tree: a node per stage of the quickstart
    assert seen.figures == 2  # the tree and the loss curves (no matrix in the quickstart)
    assert ("Pretraining vs fine-tuning (the seed's table)\n\tpretrain\tfinetune\npurpose\tpretraining\tfine-tuning\n"
            "starts from\tits config (random weights)\tstage pretrain\n") in seen.text
    assert "\nparameters updated\t100.00% (" in seen.text
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copy(shot, quickstart_run.parent / "report_screenshot.png")  # kept beside the shared run for a person to look at
