"""The trackers a run can be logged to: which module each needs, which extra installs it, and which
one `tracking.backend=auto` picks. Only names here: the trackers are imported by `write.py`, in the
child process that logs."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

TRACKING_ENV = "PTFT_HF_TRACKING"  # the backend `auto` stands for, when set (the test suite sets none)


@dataclass(frozen=True)
class Tracker:
    name: str
    module: str  # what must be importable
    extra: str  # pip install 'ptft_hf[<extra>]'
    where: str  # where its store lives under tracking.dir, for the log line

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


TRACKERS = {
    "trackio": Tracker("trackio", "trackio", "trackio", "trackio's SQLite files (TRACKIO_DIR)"),
    "mlflow": Tracker("mlflow", "mlflow", "mlflow", "mlflow.db (SQLite)"),
    "wandb": Tracker("wandb", "wandb", "wandb", "wandb/ (offline runs)"),
}
BACKENDS = ("auto", *TRACKERS, "none")


def chosen_tracker(backend: str) -> Tracker | None:
    """The tracker `tracking.backend` asks for: `auto` is $PTFT_HF_TRACKING when set, else trackio
    when installed, else none; `none` is None. Unknown names are `checks.py`'s to report."""
    if backend == "auto":
        backend = os.environ.get(TRACKING_ENV) or ("trackio" if TRACKERS["trackio"].installed() else "none")
    return TRACKERS.get(backend)
