"""Pipelines: stages run in order, each a full run in its own folder, a later stage starting from
an earlier stage's model. Several stages may start from the same one (one pretrained model, many
specialists): the pipeline is then a tree, run in its stages' order, each branch with its own
lineage. The pipeline report puts the stages side by side.

Each stage is composed from conf/ like a command line of its own: its group options, the
preset's `overrides`, then the user's `extra`. A stage with `init_from` loads the earlier stage's
`model/` (model=pretrained) and also measures perplexity on that stage's eval data, so the cost of
specialising (general knowledge lost) is a number next to the gain.

Re-running a pipeline into its folder compares each stage with the finished run there (the
fingerprint of its config in its `metrics.json`):

- without `overwrite`: stages that finished with the same config are skipped and unfinished ones
  resume from their latest checkpoints (a re-run after a crash); a finished stage whose config
  changed is refused, one line per changed stage, before anything is written.
- `overwrite=true`: a stage that changed (or has no finished run) trains again, and so does every
  stage built on it (its branch below it); the other stages are kept as they are. When no stage
  changed, every stage trains again. The replaced stages and the old pipeline report wait in
  `.replaced/` until the new pipeline finishes; the kept stages stay in place, untouched.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.compose import compose_config
from ptft_hf.config.fingerprint import NOT_FINGERPRINTED, config_fingerprint
from ptft_hf.config.schema import HubConfig, StageConfig
from ptft_hf.checks import collect_problems
from ptft_hf.distributed import is_main_process, wait_for_everyone
from ptft_hf.errors import Problem, UserError
from ptft_hf.run_dir import (FINISHED_MARKER, discard_aside, guard_run_dir, holds_unfinished_run, is_finished, mark_started,
                             set_aside)

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


def _with_pipeline_hub(stage_cfg: DictConfig, cfg: DictConfig) -> None:
    """The pipeline's `hub.*` settings (the command line's) on its last stage: one repo receives
    the final model. Earlier stages publish only through their own `extra` (e.g. hub.push=true)."""
    if "hub" not in cfg:
        return
    defaults = OmegaConf.structured(HubConfig)
    changed = {k: v for k, v in OmegaConf.to_container(cfg.hub, resolve=True).items() if defaults[k] != v}
    if changed:
        stage_cfg.hub = OmegaConf.merge(stage_cfg.hub, changed)


def init_from_problem(name: str, init_from: str, names: list[str]) -> Problem | None:
    """`stages.<name>.init_from` must name a stage before `name` in pipeline order (`names`)."""
    earlier = names[:names.index(name)]
    if init_from in earlier:
        return None
    choices = (f"use one of: {', '.join(earlier)}" if earlier
               else "remove it: this is the first stage (it starts from its model option)")
    if init_from == name:
        return Problem(f"stages.{name}.init_from", "a stage cannot start from its own model", choices)
    if init_from in names:
        return Problem(f"stages.{name}.init_from", f"'{init_from}' comes after '{name}'; a stage starts from an earlier stage",
                       choices)
    return Problem(f"stages.{name}.init_from", f"'{init_from}' is not a stage of this pipeline (stages: {', '.join(names)})",
                   choices)


def compose_stages(cfg: DictConfig, run_dir: Path, shared: list[str] = ()) -> dict[str, DictConfig]:
    """Compose and validate every stage before any of them runs; report all problems at once."""
    stages: dict[str, StageConfig] = OmegaConf.to_object(cfg.stages)
    names = list(stages)
    composed: dict[str, DictConfig] = {}
    problems: list[Problem] = []
    for name, stage in stages.items():
        if stage.init_from:
            problem = init_from_problem(name, stage.init_from, names)
            if problem is not None:
                problems.append(problem)
                continue
            if stage.init_from not in composed:
                continue  # the earlier stage failed to compose: its own problem is reported
        try:
            stage_cfg = compose_config(stage_overrides(name, stage, run_dir, cfg.seed, list(shared)))
        except Exception as err:  # Hydra composition errors: name the stage, keep the message
            from ptft_hf.config.errors import describe_compose_error

            problems.append(Problem(f"stages.{name}", describe_compose_error(err), "fix the stage's options or overrides"))
            continue
        stage_cfg.overwrite = cfg.overwrite
        if name == names[-1]:
            _with_pipeline_hub(stage_cfg, cfg)
        if stage_cfg.data.get("replay") and not stage.init_from:
            problems.append(Problem(f"stages.{name}: data.replay", "needs a base stage to replay, and this stage has no "
                                    "init_from", "set init_from to the stage whose data it replays, or drop data.replay"))
        for problem in collect_problems(stage_cfg):
            if problem.field == "model.name_or_path" and stage.init_from:
                continue  # filled from the earlier stage, which does not exist yet
            problems.append(Problem(f"stages.{name}: {problem.field}", problem.what, problem.fix))
        composed[name] = stage_cfg
    if problems:
        raise UserError(problems)
    return composed


@dataclass
class StagePlan:
    """What a (re-)run of a pipeline does with each stage: `kept` (name -> the finished run's
    metrics, skipped and left untouched) and `run` (name -> why it trains), both in pipeline order."""

    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, str] = field(default_factory=dict)
    resume: set[str] = field(default_factory=set)  # an unfinished stage that continues from its checkpoint
    restart: set[str] = field(default_factory=set)  # unfinished stages that start over instead of resuming


def stage_ancestors(name: str, stages: dict[str, StageConfig]) -> list[str]:
    """The stages `name` starts from, nearest first (its `init_from`, that stage's, ...)."""
    chain, base = [], stages[name].init_from
    while base and base not in chain:
        chain.append(base)
        base = stages[base].init_from
    return chain


def plan_stages(composed: dict[str, DictConfig], stages: dict[str, StageConfig], run_dir: Path,
                overwrite: bool) -> StagePlan:
    """Compare every stage with the run its folder holds and decide which stages are kept and which
    train (see the module docstring). A pipeline is a tree (several stages may start from the same
    one): a stage trains when it changed, never finished, or its base stage trains; the other
    branches are kept. Without `overwrite`, a finished stage that would have to train again is
    refused, one line per such stage, and so is a finished pipeline with nothing to do."""
    names = list(composed)
    finished: dict[str, dict[str, Any]] = {}
    state: dict[str, str] = {}
    for name, stage_cfg in composed.items():
        marker = run_dir / name / FINISHED_MARKER
        if marker.is_file():
            finished[name] = json.loads(marker.read_text(encoding="utf-8"))
            recorded = config_fingerprint(_as_recorded(stage_cfg, stages[name], finished[name]))
            same = finished[name].get("config_fingerprint") == recorded
            state[name] = "same" if same else "changed"
        else:
            state[name] = "unfinished" if holds_unfinished_run(run_dir / name) else "absent"
    rerun_all = overwrite and all(state[name] == "same" for name in names)
    plan = StagePlan()
    for name in names:  # pipeline order: a stage's base comes before it
        base = stages[name].init_from
        base_trains = base in plan.run
        if state[name] == "same" and not base_trains and not rerun_all:
            plan.kept[name] = finished[name]
            continue
        reasons = []
        if rerun_all:
            reasons.append("overwrite=true and no stage changed: every stage trains again")
        elif state[name] == "absent":
            reasons.append("it has not run yet")
        else:
            if state[name] == "changed":
                reasons.append(f"its config changed since the run in {run_dir / name}"
                               + _changed_keys(run_dir / name, _as_recorded(composed[name], stages[name], finished[name])))
            if base_trains:
                reasons.append(f"its base stage '{base}' trains again")
                if state[name] == "unfinished":
                    plan.restart.add(name)
            elif state[name] == "unfinished":
                reasons.append("its run is unfinished: it resumes from its latest checkpoint")
                plan.resume.add(name)
        plan.run[name] = "; ".join(reasons)
    if not overwrite:
        _refuse_finished(plan, state, stages, run_dir)
    return plan


def _as_recorded(stage_cfg: DictConfig, stage: StageConfig, metrics: dict[str, Any]) -> DictConfig:
    """The stage's config as its finished run (`metrics`) would have it. A stage that starts from an
    earlier stage names that stage's `model/` by absolute path: where the run recorded the same
    stage as its base, its path then stands in for today's, so a pipeline folder moved or copied
    elsewhere still matches (whether the base itself changed is judged on the base stage)."""
    lineage = metrics.get("lineage") or {}
    if stage.init_from and lineage.get("init_from_stage") == stage.init_from and lineage.get("base_model"):
        stage_cfg = copy.deepcopy(stage_cfg)
        stage_cfg.model.name_or_path = lineage["base_model"]
    return stage_cfg


def _refuse_finished(plan: StagePlan, state: dict[str, str], stages: dict[str, StageConfig], run_dir: Path) -> None:
    """Without overwrite: no finished stage is trained over, and a finished pipeline is not re-run."""
    problems: list[Problem] = []
    kept_said = False
    for name in plan.run:
        after = [n for n in plan.run if name in stage_ancestors(n, stages)]
        also = f" and the stages built on it ({', '.join(after)})" if after else ""
        kept = ""
        if plan.kept and not kept_said:
            kept = f"; {', '.join(plan.kept)} kept as {'it is' if len(plan.kept) == 1 else 'they are'}"
        if state[name] == "changed":
            problems.append(Problem(f"stages.{name}", f"'{run_dir / name}' holds a finished stage run with another config",
                                    f"add overwrite=true to train it again{also}{kept}, or choose another hydra.run.dir"))
            kept_said = True
        elif state[name] == "same" and not any(state[a] == "changed" for a in stage_ancestors(name, stages)):
            problems.append(Problem(f"stages.{name}", f"'{run_dir / name}' holds a finished stage run, but its base stage "
                                    f"'{stages[name].init_from}' trains again", "add overwrite=true to train it again too, "
                                    "or choose another hydra.run.dir"))
    if not problems and not plan.run and is_finished(run_dir):  # new stages added to a finished pipeline do run
        problems.append(Problem("hydra.run.dir", f"'{run_dir}' already holds a finished run",
                                "choose another folder or add overwrite=true"))
    if problems:
        raise UserError(problems)


def _changed_keys(stage_dir: Path, stage_cfg: DictConfig, limit: int = 4) -> str:
    """` (trainer.max_steps: 30 -> 10, ...)`: settings that differ from the stage's saved
    config.yaml (best effort: the saved file is pruned and redacted), or ''."""
    try:
        from ptft_hf.config.redact import redact, secret_values
        from ptft_hf.run_dir import flatten_config

        old = flatten_config(OmegaConf.to_container(OmegaConf.load(stage_dir / "config.yaml")))
        resolved = OmegaConf.to_container(stage_cfg, resolve=True)
        new = flatten_config(redact(resolved, secret_values(resolved)))  # as config.yaml holds it: no secrets in the log
    except Exception:  # no readable config.yaml: the fingerprint alone says it changed
        return ""
    def counted(key: str) -> bool:
        return key.split(".")[0] not in NOT_FINGERPRINTED and key != "trainer.resume_from_checkpoint"

    changed = [f"{k}: {old[k]} -> {new[k]}" for k in sorted(old.keys() & new.keys())
               if old[k] != new[k] and old[k] != "***" and counted(k)]
    # a setting this version added (or dropped) changes the fingerprint too: name it
    changed += [f"{k}: (not recorded) -> {new[k]}" for k in sorted(new.keys() - old.keys()) if counted(k) and new[k] is not None]
    changed += [f"{k}: {old[k]} -> (gone)" for k in sorted(old.keys() - new.keys()) if counted(k)]
    if not changed:
        return ""
    return f" ({', '.join(changed[:limit])}{' ...' if len(changed) > limit else ''})"


def run_pipeline(cfg: DictConfig, run_dir: str | Path, shared: list[str] = ()) -> dict[str, Any]:
    """Run every stage of `cfg.stages` in order under `run_dir/<stage>`; returns all metrics.

    `shared`: overrides applied to every stage (the CLI passes the command line's, less the
    pipeline's own such as `experiment=` and `stages.*`)."""
    from ptft_hf.hub.publish import PublishError
    from ptft_hf.recipe import run  # heavy imports only when something runs
    from ptft_hf.training.report import write_pipeline_report

    run_dir = Path(run_dir)
    overwrite = bool(cfg.overwrite)
    guard_run_dir(run_dir, overwrite, pipeline=True)  # a finished single run; a pipeline's stages are compared below
    composed = compose_stages(cfg, run_dir, shared)
    stages: dict[str, StageConfig] = OmegaConf.to_object(cfg.stages)
    plan = plan_stages(composed, stages, run_dir, overwrite)
    for name in plan.kept:
        log.info("pipeline stage '%s' already finished in %s with the same config: kept as it is", name, run_dir / name)
    for name, why in plan.run.items():
        log.info("pipeline stage '%s' %s: %s", name, "starts over" if name in plan.restart else "trains", why)
    wait_for_everyone()  # several processes: every rank has planned from the folder as it was
    if is_main_process():  # the pipeline folder is rank 0's to write
        if is_finished(run_dir):  # overwrite=true: the replaced stages and the old report wait in .replaced/
            mark_started(run_dir)
            aside = set_aside(run_dir, keep=(".hydra", *plan.kept, *plan.resume))
            log.info("moved the earlier pipeline's report and replaced stages (%s) to %s; the kept stages stay in place",
                     ", ".join(sorted(p.name for p in aside.iterdir())) if aside else "none", aside)
        run_dir.mkdir(parents=True, exist_ok=True)
    wait_for_everyone()
    started = time.time()
    results: dict[str, Any] = {}
    publish_problems: list[Problem] = []
    for name, stage_cfg in composed.items():
        stage = stages[name]
        if name in plan.kept:
            results[name] = plan.kept[name]
            continue
        if name in plan.restart:  # its unfinished run started from a base that trains again: set aside, not resumed
            OmegaConf.update(stage_cfg, "trainer.resume_from_checkpoint", False, force_add=True)
        references, lineage = {}, {}
        if stage.init_from:
            parent_cfg = composed[stage.init_from]
            references = {parent_cfg.data.name: OmegaConf.to_object(parent_cfg).data}
            lineage = {
                "init_from_stage": stage.init_from,
                "base_run_dir": str((run_dir / stage.init_from).resolve()),
                "base_config_sha256": config_fingerprint(parent_cfg),  # = the base stage's metrics.json config_fingerprint
                "base_model": str((run_dir / stage.init_from / "model").resolve()),
            }
        log.info("pipeline stage '%s' (%d of %d)", name, len(results) + 1, len(composed))
        try:
            results[name] = run(stage_cfg, run_dir / name, references=references, lineage=lineage)
        except PublishError as err:  # the stage finished; only its upload failed: report it at the end
            results[name] = json.loads((run_dir / name / FINISHED_MARKER).read_text(encoding="utf-8"))
            publish_problems += [Problem(f"stages.{name}: {p.field}", p.what, p.fix) for p in err.problems]
    summary = {"stages": results, "wall_time_s": round(time.time() - started, 2),
               "stage_order": list(composed), "stages_kept": list(plan.kept), "stages_trained": list(plan.run)}
    if is_main_process():
        write_pipeline_report(run_dir, summary, stages)
        (run_dir / FINISHED_MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        discard_aside(run_dir)
    if publish_problems:
        raise PublishError(publish_problems)
    return summary

