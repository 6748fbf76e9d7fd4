"""The evaluation matrix of a pipeline that already finished (`ptft-hf-eval PIPELINE matrix=true
[matrix.limit.blimp=20 ...]`): its saved config's `matrix:` block with the given settings over it,
every stage as it is (nothing trains), eval_matrix.json written, report.md and report.html written
again with the matrix at their top, and the matrix logged as a run of the pipeline's project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ptft_hf.config.schema import MatrixConfig, StageConfig, TrackingConfig
from ptft_hf.errors import Problem, UserError
from ptft_hf.run_dir import FINISHED_MARKER
from ptft_hf.tracking.store import matrix_record, pipeline_project, track_record


def rescore_matrix(path: str | Path, settings: list[str]) -> dict[str, Any]:
    """Score a finished pipeline's matrix; `settings`: `matrix.<key>=<value>` overrides."""
    from ptft_hf.evaluation.matrix import build_matrix
    from ptft_hf.pipeline.html_report import write_reports

    run_dir = Path(path)
    marker = run_dir / FINISHED_MARKER
    summary = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if "stage_order" not in summary:
        raise UserError.of("path", f"{run_dir} holds no finished pipeline (its {FINISHED_MARKER} lists no stages)",
                           "give the folder of a pipeline whose stages all finished")
    saved = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create({})
    matrix = OmegaConf.merge(OmegaConf.structured(MatrixConfig), cfg.get("matrix") or {})
    try:
        matrix.merge_with(OmegaConf.from_dotlist([s.split(".", 1)[1] for s in settings]))
    except Exception as err:  # a misspelt key or a wrong type: one line
        raise UserError([Problem("matrix", str(err).splitlines()[0], "use the keys of the matrix: block (README)")]) from err
    matrix.enabled = True
    record = build_matrix(run_dir, {name: summary["stages"][name] for name in summary["stage_order"]}, matrix,
                          int(cfg.get("seed", 42)))
    stages = {name: OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StageConfig), stage))
              for name, stage in (cfg.get("stages") or {}).items()}
    write_reports(run_dir, summary, stages, matrix=record)
    tracking = OmegaConf.merge(OmegaConf.structured(TrackingConfig), cfg.get("tracking") or {})  # older pipelines: the default
    project, prefix = pipeline_project(run_dir, tracking.project)
    track_record(matrix_record(record), tracking, project, f"{prefix}eval_matrix")
    return record
