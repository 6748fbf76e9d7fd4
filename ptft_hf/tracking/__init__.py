"""The experiment store: each finished run folder (a lone run, a sweep's job, a pipeline's stage)
logged to a local tracker (trackio by default; MLflow on SQLite or W&B offline), with its config,
lineage and final metrics, so that runs from different days can be compared in one place."""

from ptft_hf.tracking.backends import TRACKERS, Tracker, chosen_tracker
from ptft_hf.tracking.record import RunRecord, run_record
from ptft_hf.tracking.store import project_name, track_record, track_run

__all__ = ["TRACKERS", "Tracker", "RunRecord", "chosen_tracker", "project_name", "run_record", "track_record", "track_run"]
