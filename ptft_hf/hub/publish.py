"""Publish a finished run: stage the folder, reload-check it, then upload (unless a dry run).

Used at the end of a run (with the trained model still in memory as the reference) and by
`ptft-hf-push` for any finished run folder later (the reference loaded from the run's model/).
A record of what was staged and pushed goes to `<run>/hub_push.json` (never the token).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptft_hf.config.schema import HubConfig
from ptft_hf.errors import UserError
from ptft_hf.hub.lineage import PUSH_RECORD
from ptft_hf.hub.push import Pushed, push_folder
from ptft_hf.hub.stage import Staged, load_run_config, reload_check, stage_run

log = logging.getLogger(__name__)

RECORD = PUSH_RECORD


class PublishError(UserError):
    """Publishing failed after the run finished: the run folder stays finished and can be pushed later."""


@dataclass
class Published:
    staged: Staged
    max_abs_diff: float
    pushed: Pushed | None  # None for a dry run


def default_commit_message(run_dir: Path, kind: str) -> str:
    conf = load_run_config(run_dir)
    return (f"ptft_hf: {kind} from run {run_dir.name} ({conf.objective.name}, {conf.strategy.name}, "
            f"{conf.data.name})")


def publish_run(run_dir: str | Path, hub: HubConfig, trained: Any = None) -> Published:
    """Stage, check and (unless `hub.dry_run`) upload the model of `run_dir`.

    `trained`: the trained model in memory (end of a run); else the run's model/ is loaded.
    Raises UserError with one line per problem; nothing is uploaded when the check fails.
    """
    run_dir = Path(run_dir).resolve()
    staged = stage_run(run_dir, hub)
    diff = reload_check(staged, trained, hub.atol)
    pushed = None
    if hub.push and not hub.dry_run:
        message = hub.commit_message or default_commit_message(run_dir, staged.kind)
        pushed = push_folder(staged.folder, hub.repo_id, hub.private, message, hub.revision)
    else:
        log.info("dry run: %s staged in %s, nothing uploaded", staged.kind, staged.folder)
    _write_record(run_dir, hub, Published(staged, diff, pushed))
    return Published(staged, diff, pushed)


def _write_record(run_dir: Path, hub: HubConfig, published: Published) -> None:
    staged = published.staged
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repo_id": hub.repo_id, "private": hub.private,
        "dry_run": published.pushed is None, "revision": hub.revision, "kind": staged.kind,
        "staged_dir": str(staged.folder), "files": staged.files, "reload_max_abs_logit_diff": published.max_abs_diff,
        "url": published.pushed.url if published.pushed else None,
        "commit_url": published.pushed.commit_url if published.pushed else None,
    }
    path = run_dir / RECORD
    if record["dry_run"] and path.is_file():  # keep the last real push: later stages may name it as their base
        earlier = json.loads(path.read_text(encoding="utf-8"))
        last_push = earlier.get("last_push") if earlier.get("dry_run") else earlier
        if last_push:
            record["last_push"] = last_push
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
