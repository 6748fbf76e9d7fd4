"""Logging a finished run folder to the chosen tracker. The tracker runs in a child process
(`python -m ptft_hf.tracking.write`): its environment (TRACKIO_DIR, W&B's offline mode), threads and
any failure stay out of the run, which is complete before it is tracked; a failure is a warning."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ptft_hf.tracking.backends import TRACKERS, TRACKING_ENV, chosen_tracker
from ptft_hf.tracking.record import RunRecord, run_record

log = logging.getLogger(__name__)

LONE_RUNS = "runs"  # the project of runs outside a pipeline or a sweep


def folder_project(folder: Path) -> str:
    """A project named by its folder: `outputs/2026-12-07/10-00-00` -> `2026-12-07_10-00-00`."""
    folder = folder.resolve()
    return f"{folder.parent.name}_{folder.name}"


def project_name(run_dir: Path, project: str | None = None) -> tuple[str, str]:
    """(project, run name) of a run folder outside a pipeline: a sweep's job (Hydra wrote
    multirun.yaml in the sweep folder) is a run of the sweep's project, a lone run one of `runs`.
    `project` (tracking.project) names the project instead; the run is then named by its folder."""
    run_dir = run_dir.resolve()
    if project:
        return project, folder_project(run_dir)
    if (run_dir.parent / "multirun.yaml").exists():
        return folder_project(run_dir.parent), run_dir.name
    return LONE_RUNS, folder_project(run_dir)


def tracker_chosen(tracking: Any) -> bool:
    """Whether a tracker is chosen; when none is, `tracking=auto` without trackio says so in one line."""
    if chosen_tracker(str(tracking.backend)) is not None:
        return True
    if str(tracking.backend) == "auto" and not os.environ.get(TRACKING_ENV):
        log.info("tracking=auto: trackio is not installed, so runs are not tracked (pip install 'ptft_hf[trackio]', "
                 "or tracking=none to say so)")
    return False


def track_record(record: RunRecord, tracking: Any, project: str, name: str, timeout: float = 600) -> bool:
    """Log `record` as run `name` of `project` with the tracker `tracking.backend` picks; False (and a
    warning) when it could not. `tracking=auto` without trackio logs one line saying so."""
    tracker = chosen_tracker(str(tracking.backend))
    if tracker is None:
        return tracker_chosen(tracking)
    store = Path(str(tracking.dir)).resolve()
    store.mkdir(parents=True, exist_ok=True)
    request = {"backend": tracker.name, "dir": str(store), "project": project, "name": name,
               "record": dataclasses.asdict(record)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=store, delete=False) as file:
        json.dump(request, file, default=str)
    try:  # cwd: the store, so that nothing a tracker writes by default lands elsewhere
        done = subprocess.run([sys.executable, "-m", "ptft_hf.tracking.write", file.name], cwd=store,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        Path(file.name).unlink(missing_ok=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("tracking: %s could not log run '%s' of project '%s' (%s); the run folder is complete", tracker.name,
                    name, project, last)
        return False
    log.info("tracking: run '%s' of project '%s' logged to %s in %s%s", name, project, tracker.name, store,
             f" (TRACKIO_DIR={store} trackio show --project {project})" if tracker is TRACKERS["trackio"] else "")
    return True


def track_run(run_dir: Path, tracking: Any, project: str | None = None, name: str | None = None,
              extra_config: dict[str, Any] | None = None) -> bool:
    """Log the finished run in `run_dir` (see `record.run_record`); project and name from the folder
    unless given (a pipeline gives its own and the stage's)."""
    if not tracker_chosen(tracking):
        return False
    if project is None or name is None:
        project, name = project_name(Path(run_dir), getattr(tracking, "project", None))
    return track_record(run_record(Path(run_dir), extra_config), tracking, project, name)


def pipeline_project(pipeline_dir: Path, project: str | None = None) -> tuple[str, str]:
    """(project, prefix of its stage runs) of a pipeline: the pipeline's own project (its folder's
    name, or `tracking.project`); a pipeline that is a sweep's job is a part of the sweep's project,
    its stages named `<job>/<stage>`."""
    pipeline_dir = pipeline_dir.resolve()
    if (pipeline_dir.parent / "multirun.yaml").exists() and not project:
        return folder_project(pipeline_dir.parent), f"{pipeline_dir.name}/"
    return project or folder_project(pipeline_dir), f"{folder_project(pipeline_dir)}/" if project else ""


def matrix_record(matrix: dict[str, Any]) -> RunRecord:
    """The evaluation matrix as a run of the pipeline's project: `final/<node>/<task>` per scored cell."""
    final = {f"final/{node}/{task}": cell["value"] for node, row in matrix["rows"].items()
             for task, cell in row["cells"].items() if isinstance(cell.get("value"), (int, float))}
    settings = {k: matrix.get(k) for k in ("tasks", "general_tasks", "limit", "fewshot_limit", "dtype", "device", "seconds")}
    return RunRecord(config={"eval_matrix": settings}, final=final)
