"""The run folder's rules: a finished run is never written over unless asked, an unfinished one
is continued from its latest checkpoint, and a failed start leaves an earlier run as it was.

- finished (`metrics.json` present): refused unless `overwrite=true`. With overwrite the old
  run's files are moved into `<run>/.replaced/` just before the new run starts writing, and
  deleted only once the new run has finished. Checks and data preparation come first, so a
  mistake found there leaves the old run where it was. A finished pipeline's folder is judged
  stage by stage (`ptft_hf.pipeline`): kept stages stay in place, replaced ones wait in
  `<pipeline>/.replaced/` with the old report until the new pipeline finishes.
- unfinished (checkpoints present, no `metrics.json`, e.g. after a crash or a kill): the run
  continues from its latest complete checkpoint (see `latest_checkpoint`).
- Hydra writes `.hydra/` and its job log into the folder before the job starts; the CLI keeps a
  copy of those small files and writes them back when the run fails before it writes anything
  itself (`FolderSnapshot`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

FINISHED_MARKER = "metrics.json"  # written last: its presence marks a finished run
CHECKPOINTS = "checkpoints"  # Trainer checkpoints (TrainingArguments.output_dir)
ASIDE = ".replaced"  # a finished run being replaced (overwrite=true) waits here
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def guard_run_dir(run_dir: Path, overwrite: bool, field: str = "hydra.run.dir", pipeline: bool | None = None) -> None:
    """Refuse a folder that holds a finished run unless `overwrite`.

    A finished pipeline's folder passes unless `pipeline` is False (a single run, as `recipe.run`
    and the API say): the pipeline compares its stages with the command's and names the changed
    ones (`ptft_hf.pipeline`), so a caller that does not know yet what will run (the CLI before
    composing: None) lets it through, and the recipe refuses a single run there before any work."""
    if not is_finished(run_dir) or overwrite or (pipeline is not False and is_pipeline_run(run_dir)):
        return
    raise UserError.of(
        field, f"'{run_dir}' already holds a finished run",
        "choose another folder or add overwrite=true",
    )


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED_MARKER).exists()


def is_pipeline_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a finished pipeline (its `metrics.json` is the stages' summary)."""
    try:
        return "stage_order" in json.loads((Path(run_dir) / FINISHED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def checkpoint_step(checkpoint: str | Path) -> int:
    match = _CHECKPOINT_RE.match(Path(checkpoint).name)
    if not match:
        raise ValueError(f"not a Trainer checkpoint folder: {checkpoint}")
    return int(match.group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under `run_dir/checkpoints`, or None.

    A process killed while saving leaves a checkpoint folder without `trainer_state.json` (the
    Trainer writes it after the weights, optimizer and RNG states): such a folder is skipped.
    """
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name) and (p / TRAINER_STATE).is_file()]
    return max(complete, key=checkpoint_step, default=None)


def holds_unfinished_run(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return not is_finished(run_dir) and ((run_dir / CHECKPOINTS).is_dir() or (run_dir / "train_log.jsonl").exists())


def trim_jsonl(path: Path, last_step: int) -> int:
    """Keep the records of `path` up to `last_step` (what a resumed run repeats goes); returns how
    many were dropped. The Trainer's end-of-training summary (`train_runtime`) is dropped too."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped += 1
            continue
        if record.get("step", 0) > last_step or "train_runtime" in record:
            dropped += 1
        else:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return dropped


def resume_checkpoint(run_dir: Path, requested: Any = None) -> Path | None:
    """The checkpoint a run in `run_dir` continues from, following `trainer.resume_from_checkpoint`
    (`requested`):

    - null (default): the latest complete checkpoint of an unfinished run in this folder, if any
      (a crashed or killed run continues by itself when pointed at the same folder);
    - true: the same, but it is an error when there is none; false: start over (the unfinished
      run's files are set aside);
    - a path: that `checkpoint-N` folder (from this or another run folder).
    """
    run_dir = Path(run_dir)
    if requested is False or str(requested).lower() in ("false", "no", "never"):
        return None
    if requested is None or requested is True or str(requested).lower() in ("true", "yes", "auto", "latest"):
        found = None if is_finished(run_dir) else latest_checkpoint(run_dir)  # never a replaced run's
        if found is None and requested is True:
            raise UserError.of("trainer.resume_from_checkpoint", f"no complete checkpoint under '{run_dir / CHECKPOINTS}'",
                               "point it at a checkpoint-N folder, or leave it unset to start a new run")
        if found is not None:
            log.info("resuming the unfinished run in %s from %s (step %d)", run_dir, found, checkpoint_step(found))
        return found
    path = Path(str(requested)).expanduser()
    if not (path / TRAINER_STATE).is_file() or not _CHECKPOINT_RE.match(path.name):
        raise UserError.of("trainer.resume_from_checkpoint", f"'{requested}' is not a complete Trainer checkpoint (no {TRAINER_STATE})",
                           "point it at a checkpoints/checkpoint-N folder of an earlier run")
    log.info("resuming from %s (step %d)", path, checkpoint_step(path))
    return path


def start_writing(run_dir: Path, config: dict[str, Any], resume_from: Path | None) -> None:
    """The run's first write into its folder (everything before it only read and checked): set an
    earlier run aside unless continuing it, write `config.yaml`, and when resuming drop the log
    records the resumed steps will write again."""
    run_dir = Path(run_dir)
    continuing = resume_from is not None and run_dir.resolve() in Path(resume_from).resolve().parents
    if is_finished(run_dir) or (holds_unfinished_run(run_dir) and not continuing):
        log.info("moved the earlier run's files in %s to %s; they are deleted once this run finishes",
                 run_dir, set_aside(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_started(run_dir)
    if resume_from is not None:
        _warn_changed_config(run_dir / "config.yaml", config)
        for name in ("train_log.jsonl", "samples.jsonl"):
            trim_jsonl(run_dir / name, checkpoint_step(resume_from))
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {key: value for k, v in node.items() for key, value in flatten_config(v, f"{prefix}{k}.").items()}


def _warn_changed_config(previous_path: Path, config: dict[str, Any]) -> None:
    if not previous_path.exists():
        return
    old, new = flatten_config(OmegaConf.to_container(OmegaConf.load(previous_path))), flatten_config(config)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "trainer.resume_from_checkpoint"]
    if changed:
        log.warning("resuming with a changed config (%s); data order and results follow the new values",
                    ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed[:6]) + (" ..." if len(changed) > 6 else ""))


def set_aside(run_dir: Path, keep: tuple[str, ...] = (".hydra",)) -> Path | None:
    """Move an earlier run's files (all but `keep`) into `run_dir/.replaced`; returns it, or None
    when there was nothing to move. A leftover `.replaced` (a run already superseded) goes first."""
    run_dir = Path(run_dir)
    aside = run_dir / ASIDE
    entries = [p for p in run_dir.iterdir() if p.name not in (ASIDE, *keep) and not p.name.endswith(".log")] if run_dir.is_dir() else []
    if not entries:
        return None
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    return aside


def discard_aside(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / ASIDE, ignore_errors=True)


_STARTED: set[Path] = set()


def mark_started(run_dir: Path) -> None:
    """Called when a run starts writing into its folder (after every check and the data preparation)."""
    _STARTED.add(Path(run_dir).resolve())


def has_started(run_dir: Path) -> bool:
    """Whether a run in `run_dir` (or a pipeline stage below it) has started writing."""
    root = Path(run_dir).resolve()
    return any(path == root or root in path.parents for path in _STARTED)


class FolderSnapshot:
    """The small files Hydra writes into an existing run folder before the job starts (`.hydra/*`,
    `*.log`), kept in memory so that a run failing before it writes anything can put them back."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.existed = self.run_dir.is_dir()
        self.entries = {p.name for p in self.run_dir.iterdir()} if self.existed else set()
        self.files: dict[Path, bytes] = {}
        if self.existed:
            candidates = [*self.run_dir.glob("*.log"), *(self.run_dir / ".hydra").glob("*")]
            self.files = {p: p.read_bytes() for p in candidates if p.is_file()}

    def restore(self) -> None:
        if not self.existed:
            return  # a fresh folder: what Hydra wrote there is the record of the failed command
        hydra_dir = self.run_dir / ".hydra"
        for path in [*self.run_dir.glob("*.log"), *hydra_dir.glob("*")]:
            if path.is_file() and path not in self.files:
                path.unlink()
        for path, data in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for entry in self.run_dir.iterdir():
            if entry.name not in self.entries and entry.name in (".hydra",) and not any(entry.iterdir()):
                entry.rmdir()
