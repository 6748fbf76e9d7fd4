"""run_pipeline: every stage of `cfg.stages` in order, each a full run in its own folder, then the
pipeline report and the pipeline's `metrics.json`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.fingerprint import config_fingerprint
from ptft_hf.config.schema import StageConfig
from ptft_hf.distributed import is_main_process, wait_for_everyone
from ptft_hf.errors import Problem, UserError
from ptft_hf.pipeline.stages import compose_stages, plan_stages
from ptft_hf.run_dir import FINISHED_MARKER, discard_aside, guard_run_dir, is_finished, mark_started, set_aside
from ptft_hf.tracking.store import matrix_record, pipeline_project, track_record, track_run, tracker_chosen

log = logging.getLogger(__name__)


def run_pipeline(cfg: DictConfig, run_dir: str | Path, shared: list[str] = ()) -> dict[str, Any]:
    """Run every stage of `cfg.stages` in order under `run_dir/<stage>`; returns all metrics.

    `shared`: overrides applied to every stage (the CLI passes the command line's, less the
    pipeline's own such as `experiment=` and `stages.*`)."""
    from ptft_hf.hub.publish import PublishError
    from ptft_hf.pipeline.html_report import write_reports  # matplotlib: only when something runs
    from ptft_hf.recipe import run  # heavy imports only when something runs

    run_dir = Path(run_dir)
    overwrite = bool(cfg.overwrite)
    guard_run_dir(run_dir, overwrite, pipeline=True)  # a finished single run; a pipeline's stages are compared below
    composed = compose_stages(cfg, run_dir, shared)
    matrix_settings = cfg.get("matrix")
    if matrix_settings is not None and matrix_settings.enabled:  # the matrix's own settings, before any stage trains
        from ptft_hf.evaluation.matrix import settings_problems

        problems = settings_problems(matrix_settings, [str(c.data.name) for c in composed.values()])
        if problems:
            raise UserError(problems)
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
            results[name] = run(stage_cfg, run_dir / name, references=references, lineage=lineage, track=False)
        except PublishError as err:  # the stage finished; only its upload failed: report it at the end
            results[name] = json.loads((run_dir / name / FINISHED_MARKER).read_text(encoding="utf-8"))
            publish_problems += [Problem(f"stages.{name}: {p.field}", p.what, p.fix) for p in err.problems]
        if is_main_process():
            track_stage(cfg, run_dir, name, results, stages)
    summary = {"stages": results, "wall_time_s": round(time.time() - started, 2),
               "stage_order": list(composed), "stages_kept": list(plan.kept), "stages_trained": list(plan.run)}
    if is_main_process():
        matrix = None
        if matrix_settings is not None and matrix_settings.enabled:  # every node on every task, after all stages
            from ptft_hf.evaluation.matrix import build_matrix

            matrix = build_matrix(run_dir, {name: results[name] for name in composed}, matrix_settings, int(cfg.seed))
            summary["eval_matrix_s"] = matrix["seconds"]
            project, prefix = pipeline_project(run_dir, cfg.tracking.project)
            track_record(matrix_record(matrix), cfg.tracking, project, f"{prefix}eval_matrix")
        write_reports(run_dir, summary, stages, matrix=matrix)
        (run_dir / FINISHED_MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        discard_aside(run_dir)
    if publish_problems:
        raise PublishError(publish_problems)
    return summary



def track_stage(cfg: DictConfig, run_dir: Path, name: str, results: dict[str, Any], stages: dict[str, StageConfig]) -> None:
    """A stage that just finished, logged as a run of the pipeline's project, with its column of the
    seed's table (the stages so far) and its place in the tree."""
    from ptft_hf.pipeline.report import seed_table_column

    if not tracker_chosen(cfg.tracking):
        return
    project, prefix = pipeline_project(run_dir, cfg.tracking.project)
    extra = {"pipeline": str(run_dir.resolve()), "stage": name, "init_from": stages[name].init_from,
             "seed_table": seed_table_column(name, results, stages)}
    track_run(run_dir / name, cfg.tracking, project, f"{prefix}{name}", extra)
