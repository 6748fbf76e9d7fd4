"""Every component's checks of a composed config, collected at once and before any work.

Each part owns its checks beside its code (data/, models/, objectives/, strategies/, training/,
hub/); this module only asks each of them and reports every problem in one `UserError`, in group
order. Checks that depend on the objective or strategy ask their registry entries.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ptft_hf.data.checks import data_problems
from ptft_hf.errors import Problem, UserError
from ptft_hf.hub.checks import adapter_base_problems, hub_problems
from ptft_hf.models.checks import model_problems
from ptft_hf.objectives.registry import (exclusive_setting_problems, find_objective, own_problems,
                                         unknown_objective_problem)
from ptft_hf.strategies.registry import find_strategy, unknown_strategy_problem
from ptft_hf.tracking.checks import tracking_problems
from ptft_hf.training.checks import trainer_problems


def collect_problems(cfg: DictConfig) -> list[Problem]:
    """Every problem found in the composed config, in group order."""
    objective, strategy = find_objective(cfg.objective.name), find_strategy(cfg.strategy.name)
    problems: list[Problem] = []
    if objective is None:
        problems.append(unknown_objective_problem(cfg.objective.name))
    if strategy is None:
        problems.append(unknown_strategy_problem(cfg.strategy.name))
    problems += _objective_problems(cfg, objective)
    if strategy is not None:
        problems += strategy.problems(cfg)
    problems += model_problems(cfg, objective)
    problems += data_problems(cfg, objective)
    problems += trainer_problems(cfg, quantizes=bool(strategy and strategy.quantizes))
    if "hub" in cfg:
        problems += hub_problems(cfg.hub, strategy, objective)
        problems += adapter_base_problems(cfg, strategy)
    if "tracking" in cfg:
        problems += tracking_problems(cfg.tracking)
    return problems


def _objective_problems(cfg: DictConfig, objective: object) -> list[Problem]:
    """The settings every objective shares, then the objective's own."""
    settings = cfg.objective
    problems = []
    if settings.block_size < 2:
        problems.append(Problem("objective.block_size", f"{settings.block_size} is too short", "use at least 2 (128 or more is usual)"))
    if settings.length_megabatch is not None and settings.length_megabatch < 1:
        problems.append(Problem("objective.length_megabatch", f"{settings.length_megabatch} batches cannot hold a batch",
                                "use at least 1 (200 is the default), or null for transformers' LengthGroupedSampler"))
    if settings.get("rdrop_alpha", 0.0) < 0:
        problems.append(Problem("objective.rdrop_alpha", f"{settings.rdrop_alpha} is negative", "use 0 (off) or a KL weight such as 1.0"))
    if not 0.0 < settings.mlm_probability < 1.0:
        problems.append(Problem("objective.mlm_probability", f"{settings.mlm_probability} is not a probability",
                                "use a value such as 0.15"))
    if objective is None:
        return problems
    problems += exclusive_setting_problems(cfg, objective, reported={p.field for p in problems})
    return problems + own_problems(cfg, objective)


def validate(cfg: DictConfig) -> None:
    """Raise one UserError listing every problem, or return quietly."""
    problems = collect_problems(cfg)
    if problems:
        raise UserError(problems)
