"""The run folder's one rule: a finished run is never written over unless asked."""

from __future__ import annotations

from pathlib import Path

from ptft_hf.errors import UserError

FINISHED_MARKER = "metrics.json"  # written last: its presence marks a finished run


def guard_run_dir(run_dir: Path, overwrite: bool, field: str = "hydra.run.dir") -> None:
    if (Path(run_dir) / FINISHED_MARKER).exists() and not overwrite:
        raise UserError.of(
            field, f"'{run_dir}' already holds a finished run",
            "choose another folder or add overwrite=true",
        )
