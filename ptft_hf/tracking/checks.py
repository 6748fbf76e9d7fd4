"""The tracking group's checks: an unknown backend, a tracker that is not installed."""

from __future__ import annotations

import os
from typing import Any

from ptft_hf.errors import Problem
from ptft_hf.tracking.backends import BACKENDS, TRACKING_ENV, chosen_tracker


def tracking_problems(tracking: Any) -> list[Problem]:
    """One problem per mistake in `tracking.*`, before any work."""
    backend, field = str(tracking.backend), "tracking.backend"
    if backend == "auto" and os.environ.get(TRACKING_ENV):
        backend, field = os.environ[TRACKING_ENV], f"tracking.backend=auto (${TRACKING_ENV})"
    if backend not in BACKENDS:
        return [Problem(field, f"{backend!r} is not a tracker",
                        f"use tracking={', '.join(b for b in BACKENDS if b != 'auto')} or auto (trackio when installed)")]
    tracker = chosen_tracker(backend)
    if tracker is not None and not tracker.installed():
        return [Problem("tracking", f"{tracker.name} is not installed",
                        f"pip install 'ptft_hf[{tracker.extra}]' (or tracking=none)")]
    return []
