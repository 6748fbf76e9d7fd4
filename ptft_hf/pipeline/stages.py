"""A pipeline's stages: composed one by one from conf/ (group options, the preset's overrides, the
user's extra), ordered as a tree by `init_from`, and planned against what the folder already holds
(kept, resumed, trained again or refused). See `ptft_hf.pipeline` for the rules."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.compose import compose_config
from ptft_hf.config.fingerprint import NOT_FINGERPRINTED, config_fingerprint
from ptft_hf.config.schema import HubConfig, StageConfig
from ptft_hf.checks import collect_problems
from ptft_hf.errors import Problem, UserError
from ptft_hf.run_dir import FINISHED_MARKER, holds_unfinished_run, is_finished

log = logging.getLogger(__name__)

GROUPS = ("model", "data", "objective", "strategy", "trainer")


# Command-line overrides that belong to the pipeline itself rather than to every stage.
# `hub.*` publishes the pipeline's product: it goes to the last stage only (see `_with_pipeline_hub`).
_PIPELINE_ONLY = ("experiment=", "stages.", "+stages.", "~stages", "hydra.", "seed=", "overwrite=", "verbose=", "hub.", "matrix.")


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
