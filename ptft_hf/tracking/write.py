"""`python -m ptft_hf.tracking.write REQUEST.json`: log one run record with one tracker, in a process
of its own (see `store.py`). Each writer imports its tracker; the record is `record.RunRecord`'s."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def _flat_config(values: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, values as text (MLflow's 6,000-character limit)."""
    if isinstance(values, dict) and values:
        return {k: v for key, item in values.items() for k, v in _flat_config(item, f"{prefix}{key}.").items()}
    key = re.sub(r"[^\w\-./ ]", "_", prefix.rstrip("."))
    return {key: json.dumps(values, default=str)[:6000] if not isinstance(values, str) else values[:6000]}


def write_trackio(store: Path, project: str, name: str, record: dict[str, Any]) -> None:
    os.environ["TRACKIO_DIR"] = str(store)  # read when trackio is imported
    import trackio

    trackio.init(project=project, name=name, config=record["config"], embed=False, auto_log_cpu=False, auto_log_gpu=False)
    for step, figures in record["history"]:
        trackio.log(figures, step=step)
    trackio.log(record["final"], step=record["last_step"])
    trackio.finish()


def write_mlflow(store: Path, project: str, name: str, record: dict[str, Any]) -> None:
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(project)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        project, artifact_location=(store / "mlartifacts" / project).as_uri())
    lineage = record["config"].get("lineage") or {}
    tags = {"ptft_hf.config_fingerprint": str(record["config"].get("config_fingerprint")),
            **{f"ptft_hf.lineage.{k}": str(v) for k, v in lineage.items()}}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    params = _flat_config(record["config"])
    items = list(params.items())
    from mlflow.entities import Param

    for start in range(0, len(items), 100):  # log_batch takes at most 100 parameters at a time
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
    metrics = [Metric(k, float(v), 0, step) for step, figures in record["history"] for k, v in figures.items()]
    metrics += [Metric(k, float(v), 0, record["last_step"]) for k, v in record["final"].items()]
    for start in range(0, len(metrics), 1000):  # at most 1,000 metrics a batch
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000])
    client.set_terminated(run.info.run_id)


def write_wandb(store: Path, project: str, name: str, record: dict[str, Any]) -> None:
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(store), WANDB_CONSOLE="off",
                      WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true")
    import wandb

    run = wandb.init(project=project, name=name, dir=str(store), mode="offline", config=record["config"],
                     settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False))
    for step, figures in record["history"]:
        run.log(figures, step=step)
    run.log(record["final"], step=record["last_step"])
    run.summary.update(record["final"])
    run.finish()


WRITERS = {"trackio": write_trackio, "mlflow": write_mlflow, "wandb": write_wandb}


def main(argv: list[str]) -> None:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    WRITERS[request["backend"]](Path(request["dir"]), request["project"], request["name"], request["record"])


if __name__ == "__main__":
    main(sys.argv[1:])
