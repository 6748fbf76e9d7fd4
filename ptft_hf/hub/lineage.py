"""Where a run's weights came from, read back from run folders.

A run starts from a config (trained from scratch), a Hub checkpoint, or a local folder. When that
folder is another run's `model/` (a pipeline stage's `init_from`, or `model.name_or_path=<run>/model`)
the chain continues in that run's folder, back to its own origin. The model card names the Hub
checkpoint at the root of the chain as `base_model` and never a local path, which means nothing
to anyone else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptft_hf.run_dir import FINISHED_MARKER

log = logging.getLogger(__name__)

SCRATCH, HUB, RUN, LOCAL = "scratch", "hub", "run", "local"
PUSH_RECORD = "hub_push.json"  # what publishing a run staged and pushed (ptft_hf.hub.publish)
_MAX_DEPTH = 32

# what a run folder publishes: an adapter, a full model, or an adapter merged into its base
ADAPTER, FULL, MERGED = "adapter", "full", "merged"


@dataclass
class RunRecord:
    """One link of the chain: a run folder's metrics and config, and what its model started from."""

    name: str
    run_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # model.name_or_path as the run used it
    origin: str = SCRATCH  # scratch, hub, run (another run's model/) or local (a folder of unknown origin)
    random_init: bool = False  # base's architecture and tokenizer only: no weights derive from it
    config_sha256: str | None = None  # as recorded by the run that started from this one

    @property
    def revision(self) -> str | None:
        return (self.config.get("model") or {}).get("revision")


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json, config.yaml) of a run folder; empty dicts for what is missing."""
    metrics_path, config_path = run_dir / FINISHED_MARKER, run_dir / "config.yaml"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    config = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}) if config_path.is_file() else {}
    return metrics, config


def looks_like_hub_id(name: str) -> bool:
    """`gpt2` or `org/name` and not a folder on this machine, nor a path by its shape."""
    if not name or name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or Path(name).expanduser().exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _run_of_model_folder(folder: str) -> Path | None:
    """The run folder whose `model/` is `folder`, when `folder` is one."""
    path = Path(folder).expanduser()
    if path.name == "model" and (path.parent / FINISHED_MARKER).is_file():
        return path.parent
    return None


def _record(run_dir: Path | None, name: str, sha: str | None = None, metrics: dict[str, Any] | None = None) -> RunRecord:
    recorded, config = read_run(run_dir) if run_dir else ({}, {})
    metrics = recorded if metrics is None else metrics
    model = config.get("model") or {}
    base = model.get("name_or_path", metrics.get("base_model"))
    record = RunRecord(name=name, run_dir=run_dir, metrics=metrics, config=config, base=base,
                       random_init=bool(model.get("random_init", metrics.get("random_init", False))),
                       config_sha256=sha)
    if run_dir is None:
        record.origin = LOCAL  # known only by name: the folder is not on this machine
    elif not base:
        record.origin = SCRATCH
    elif (metrics.get("lineage") or {}).get("base_run_dir") or _run_of_model_folder(base):
        record.origin = RUN
    elif looks_like_hub_id(base):
        record.origin = HUB
    else:
        record.origin = LOCAL
    return record


def _parent(record: RunRecord) -> tuple[Path | None, str, str | None] | None:
    """(folder, name, config sha256) of the run `record` started from, if it started from a run."""
    if record.origin != RUN or record.run_dir is None:
        return None
    lineage = record.metrics.get("lineage") or {}
    sha = lineage.get("base_config_sha256")
    if lineage.get("base_run_dir"):
        name = lineage.get("init_from_stage") or Path(lineage["base_run_dir"]).name
        # the sibling stage first (a copied or moved pipeline folder holds its own earlier stages),
        # preferring the run whose config fingerprint is the one recorded
        candidates = [c for c in (record.run_dir.parent / name, Path(lineage["base_run_dir"])) if (c / FINISHED_MARKER).is_file()]
        matching = [c for c in candidates if sha and read_run(c)[0].get("config_fingerprint") == sha]
        if matching or candidates:
            return (matching or candidates)[0], name, sha
        log.warning("lineage: the folder of stage '%s' (%s) is gone; the chain stops there", name, lineage["base_run_dir"])
        return None, name, sha
    folder = _run_of_model_folder(record.base or "")
    return (folder, folder.name, sha) if folder else None


def trace_lineage(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> list[RunRecord]:
    """The chain of runs that produced `run_dir`'s model, oldest first, ending with `run_dir` itself.

    `metrics`: the run's own metrics when its metrics.json is not written yet (end of a run).
    """
    run_dir = Path(run_dir).resolve()
    chain = [_record(run_dir, run_dir.name, metrics=metrics)]
    seen = {run_dir}
    while len(chain) < _MAX_DEPTH:
        parent = _parent(chain[0])
        if parent is None:
            break
        folder, name, sha = parent
        if folder is not None and folder.resolve() in seen:
            break
        chain.insert(0, _record(folder.resolve() if folder else None, name, sha))
        if folder is None:
            break
        seen.add(folder.resolve())
    return chain


def hub_base_model(chain: list[RunRecord]) -> str | None:
    """The Hub checkpoint this run's weights derive from, found up the chain; None when the
    weights come from a config, a random init or a local folder of unknown origin."""
    for record in reversed(chain):
        if record.random_init:
            return None
        if record.origin == HUB:
            return record.base
        if record.origin == LOCAL:
            cached = cached_snapshot_id(record.base)
            return cached[0] if cached else None
        if record.origin != RUN:
            return None
    return None


def cached_snapshot_id(folder: str | None) -> tuple[str, str] | None:
    """(Hub id, commit) of a folder in the Hugging Face cache's layout
    (`.../models--org--name/snapshots/<commit>`): the Hub checkpoint it is a copy of."""
    if not folder:
        return None
    parts = Path(folder).expanduser().parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    repo = parts[-3][len("models--"):].replace("--", "/")
    return (repo, parts[-1]) if looks_like_hub_id(repo) else None


def published_full_model(record: RunRecord) -> tuple[str, str | None] | None:
    """(repo id, revision) where the full model of `record`'s run was last pushed, if it was: the
    revision is the upload's commit (the exact weights), else the branch it went to."""
    path = record.run_dir / PUSH_RECORD if record.run_dir else None
    if not path or not path.is_file():
        return None
    pushed = json.loads(path.read_text(encoding="utf-8"))
    if pushed.get("dry_run"):  # a dry run after a push keeps that push's record beside its own
        pushed = pushed.get("last_push") or {}
    if pushed.get("kind") != FULL or not pushed.get("repo_id"):
        return None
    commit = str(pushed.get("commit_url") or "").rstrip("/").rsplit("/commit/", 1)
    return pushed["repo_id"], commit[1] if len(commit) == 2 and commit[1] else pushed.get("revision")


def adapter_base_on_hub(chain: list[RunRecord]) -> tuple[str, str | None] | None:
    """(Hub id, revision) of the exact weights the last run's adapter was trained on, when others
    can load them by that id: a Hub checkpoint, a copy of one in the Hugging Face cache, or an
    earlier stage whose full model was pushed. None otherwise (a local folder, a random init)."""
    record = chain[-1]
    if record.random_init:
        return None
    if record.origin == HUB:
        return record.base, record.revision
    if record.origin == LOCAL:
        return cached_snapshot_id(record.base)
    if record.origin == RUN and len(chain) > 1:
        return published_full_model(chain[-2])
    return None


def describe_origin(record: RunRecord, previous: RunRecord | None) -> str:
    """How `record`'s model started, in words (no local paths)."""
    model = (record.config.get("model") or {}).get("name") or record.metrics.get("model") or "model"
    if record.origin == SCRATCH:
        return f"`{model}` built from its config, trained from scratch"
    if record.random_init:
        return f"random weights with the architecture and tokenizer of `{_short(record.base)}` (a control)"
    if record.origin == HUB:
        revision = f" (revision `{record.revision}`)" if record.revision else ""
        return f"[`{record.base}`](https://huggingface.co/{record.base}){revision} from the Hub"
    if record.origin == RUN and previous is not None:
        return f"the model of stage `{previous.name}`"
    if record.run_dir is None:
        return "a run whose folder is not on this machine"
    cached = cached_snapshot_id(record.base)
    if cached:
        return f"[`{cached[0]}`](https://huggingface.co/{cached[0]}) (revision `{cached[1]}`), a copy in the Hugging Face cache"
    return f"a local checkpoint (`{_short(record.base)}`), origin not recorded"


def _short(path: str | None) -> str:
    """The last two parts of a local path: enough to recognise it, without the user's folders."""
    if not path:
        return "?"
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path
