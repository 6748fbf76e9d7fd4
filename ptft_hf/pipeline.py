"""Pipelines: stages run in order, each a full run in its own folder, a later stage starting from
an earlier stage's model. The pipeline report puts the stages side by side.

Each stage is composed from conf/ like a command line of its own: its group options, the
preset's `overrides`, then the user's `extra`. A stage with `init_from` loads the earlier stage's
`model/` (model=pretrained) and also measures perplexity on that stage's eval data, so the cost of
specialising (general knowledge lost) is a number next to the gain.

Re-running a pipeline into the same folder after a crash skips the stages that finished with the
same config (their `metrics.json` holds the config's fingerprint) and resumes the unfinished one
from its latest checkpoint; `overwrite=true` runs every stage again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.compose import compose_config
from ptft_hf.config.schema import HubConfig, StageConfig
from ptft_hf.config.validate import collect_problems
from ptft_hf.errors import Problem, UserError
from ptft_hf.run_dir import FINISHED_MARKER, discard_aside, guard_run_dir, is_finished, mark_started, set_aside

log = logging.getLogger(__name__)

GROUPS = ("model", "data", "objective", "strategy", "trainer")


# Command-line overrides that belong to the pipeline itself rather than to every stage.
# `hub.*` publishes the pipeline's product: it goes to the last stage only (see `_with_pipeline_hub`).
_PIPELINE_ONLY = ("experiment=", "stages.", "+stages.", "~stages", "hydra.", "seed=", "overwrite=", "verbose=", "hub.")


def shared_overrides(task_overrides: list[str]) -> list[str]:
    """The command line's overrides that apply to every stage (`trainer.max_steps=10`, ...)."""
    return [o for o in task_overrides if not o.lstrip("+~").startswith(_PIPELINE_ONLY) and not o.startswith(_PIPELINE_ONLY)]


def stage_overrides(name: str, stage: StageConfig, run_dir: Path, seed: int, shared: list[str] = ()) -> list[str]:
    """The Hydra overrides that compose one stage: its options, the preset's overrides, the
    command line's shared overrides, then the stage's `extra`."""
    overrides = [f"{group}={getattr(stage, group)}" for group in GROUPS if getattr(stage, group)]
    if stage.init_from:
        if not stage.model:
            overrides.append("model=pretrained")
        overrides += [f"model.name_or_path={(run_dir / stage.init_from / 'model').resolve()}", "model.tokenizer.train=false"]
    return [*overrides, f"seed={seed}", *stage.overrides, *shared, *stage.extra]


def config_sha256(cfg: DictConfig) -> str:
    return hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True).encode()).hexdigest()


def _with_pipeline_hub(stage_cfg: DictConfig, cfg: DictConfig) -> None:
    """The pipeline's `hub.*` settings (the command line's) on its last stage: one repo receives
    the final model. Earlier stages publish only through their own `extra` (e.g. hub.push=true)."""
    if "hub" not in cfg:
        return
    defaults = OmegaConf.structured(HubConfig)
    changed = {k: v for k, v in OmegaConf.to_container(cfg.hub, resolve=True).items() if defaults[k] != v}
    if changed:
        stage_cfg.hub = OmegaConf.merge(stage_cfg.hub, changed)


# switches that change how a run is carried out, not what it computes
_NOT_FINGERPRINTED = {"overwrite", "verbose"}
_NOT_FINGERPRINTED_TRAINER = {"resume_from_checkpoint", "disable_tqdm"}


def config_fingerprint(cfg: DictConfig) -> str:
    """sha256 of what a run computes: its resolved config less `overwrite`, `verbose` and the like.
    A pipeline re-run skips a finished stage whose `metrics.json` holds the same fingerprint."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved = {k: v for k, v in resolved.items() if k not in _NOT_FINGERPRINTED}
    resolved["trainer"] = {k: v for k, v in (resolved.get("trainer") or {}).items()
                           if v is not None and k not in _NOT_FINGERPRINTED_TRAINER}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def compose_stages(cfg: DictConfig, run_dir: Path, shared: list[str] = ()) -> dict[str, DictConfig]:
    """Compose and validate every stage before any of them runs; report all problems at once."""
    stages: dict[str, StageConfig] = OmegaConf.to_object(cfg.stages)
    composed: dict[str, DictConfig] = {}
    problems: list[Problem] = []
    for name, stage in stages.items():
        if stage.init_from and stage.init_from not in composed:
            problems.append(Problem(f"stages.{name}.init_from", f"'{stage.init_from}' is not an earlier stage",
                                    f"use one of: {', '.join(composed) or '(none: this is the first stage)'}"))
            continue
        try:
            stage_cfg = compose_config(stage_overrides(name, stage, run_dir, cfg.seed, list(shared)))
        except Exception as err:  # Hydra composition errors: name the stage, keep the message
            from ptft_hf.config.errors import describe_compose_error

            problems.append(Problem(f"stages.{name}", describe_compose_error(err), "fix the stage's options or overrides"))
            continue
        stage_cfg.overwrite = cfg.overwrite
        if name == list(stages)[-1]:
            _with_pipeline_hub(stage_cfg, cfg)
        for problem in collect_problems(stage_cfg):
            if problem.field == "model.name_or_path" and stage.init_from:
                continue  # filled from the earlier stage, which does not exist yet
            problems.append(Problem(f"stages.{name}: {problem.field}", problem.what, problem.fix))
        composed[name] = stage_cfg
    if problems:
        raise UserError(problems)
    return composed


def run_pipeline(cfg: DictConfig, run_dir: str | Path, shared: list[str] = ()) -> dict[str, Any]:
    """Run every stage of `cfg.stages` in order under `run_dir/<stage>`; returns all metrics.

    `shared`: overrides applied to every stage (the CLI passes the command line's, less the
    pipeline's own such as `experiment=` and `stages.*`)."""
    from ptft_hf.hub.publish import PublishError
    from ptft_hf.recipe import run  # heavy imports only when something runs
    from ptft_hf.training.report import write_pipeline_report

    run_dir = Path(run_dir)
    guard_run_dir(run_dir, bool(cfg.overwrite))
    composed = compose_stages(cfg, run_dir, shared)
    stages: dict[str, StageConfig] = OmegaConf.to_object(cfg.stages)
    finished = {} if cfg.overwrite else _finished_stages(composed, run_dir)
    if is_finished(run_dir):  # overwrite=true: the old pipeline waits in .replaced/ until this one finishes
        mark_started(run_dir)
        log.info("moved the earlier pipeline's files to %s", set_aside(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {}
    publish_problems: list[Problem] = []
    for name, stage_cfg in composed.items():
        stage = stages[name]
        if name in finished:
            log.info("pipeline stage '%s' already finished in %s with the same config: skipped", name, run_dir / name)
            results[name] = finished[name]
            continue
        references, lineage = {}, {}
        if stage.init_from:
            parent_cfg = composed[stage.init_from]
            references = {parent_cfg.data.name: OmegaConf.to_object(parent_cfg).data}
            lineage = {
                "init_from_stage": stage.init_from,
                "base_run_dir": str((run_dir / stage.init_from).resolve()),
                "base_config_sha256": config_sha256(parent_cfg),
                "base_model": str((run_dir / stage.init_from / "model").resolve()),
            }
        log.info("pipeline stage '%s' (%d of %d)", name, len(results) + 1, len(composed))
        try:
            results[name] = run(stage_cfg, run_dir / name, references=references, lineage=lineage)
        except PublishError as err:  # the stage finished; only its upload failed: report it at the end
            results[name] = json.loads((run_dir / name / FINISHED_MARKER).read_text(encoding="utf-8"))
            publish_problems += [Problem(f"stages.{name}: {p.field}", p.what, p.fix) for p in err.problems]
    summary = {"stages": results, "wall_time_s": round(time.time() - started, 2),
               "stage_order": list(composed)}
    write_pipeline_report(run_dir, summary, stages)
    (run_dir / FINISHED_MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    discard_aside(run_dir)
    if publish_problems:
        raise PublishError(publish_problems)
    return summary


def _finished_stages(composed: dict[str, DictConfig], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stages whose folder already holds a finished run of the same config (a re-run after a
    crash); a finished stage with another config is an error, reported for all stages at once."""
    finished: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for name, stage_cfg in composed.items():
        marker = run_dir / name / FINISHED_MARKER
        if not marker.exists():
            continue
        metrics = json.loads(marker.read_text(encoding="utf-8"))
        if metrics.get("config_fingerprint") == config_fingerprint(stage_cfg):
            finished[name] = metrics
        else:
            problems.append(Problem(f"stages.{name}", f"'{run_dir / name}' holds a finished stage run with another config",
                                    "add overwrite=true to run the pipeline again, or choose another hydra.run.dir"))
    if problems:
        raise UserError(problems)
    return finished
