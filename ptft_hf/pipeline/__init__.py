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

from ptft_hf.config.fingerprint import config_fingerprint
from ptft_hf.pipeline.runner import run_pipeline
from ptft_hf.pipeline.stages import (StagePlan, compose_stages, init_from_problem, plan_stages, shared_overrides,
                                     stage_ancestors, stage_overrides)

__all__ = ["StagePlan", "compose_stages", "config_fingerprint", "init_from_problem", "plan_stages", "run_pipeline",
           "shared_overrides", "stage_ancestors", "stage_overrides"]
