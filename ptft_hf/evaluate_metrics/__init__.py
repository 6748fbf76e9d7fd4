"""Local `evaluate` modules, so classification metrics load without the Hub.

`evaluate.load("accuracy")` fetches a script from the Hub; these files are the same metrics as
local modules, loaded by path. Other metric ids still go to `evaluate.load(id)`.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_METRICS = {p.stem: p for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__"}


def load_metric(name: str):
    """A local module for the metrics shipped here, else `evaluate.load(name)` (needs the Hub)."""
    import evaluate

    return evaluate.load(str(LOCAL_METRICS[name]) if name in LOCAL_METRICS else name)
