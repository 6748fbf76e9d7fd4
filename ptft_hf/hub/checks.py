"""The hub group's checks: what would stop a push, refused before training."""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig

from ptft_hf.errors import Problem


def repo_id_problem(repo_id: str | None, field: str = "hub.repo_id") -> Problem | None:
    """A Hub repo id must be `namespace/name` in the Hub's alphabet (checked offline)."""
    if not repo_id:
        return Problem(field, "missing", f"set {field}=user/name")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return Problem(field, f"'{repo_id}' is not a Hub repo id ({str(err).splitlines()[0]})", f"use {field}=user/name")
    if repo_id.count("/") != 1:
        return Problem(field, f"'{repo_id}' has no namespace", f"use {field}=user/name (your user or organisation name first)")
    return None


def hub_problems(hub: Any, strategy: Any, objective: Any, name: Callable[[str], str] = lambda key: f"hub.{key}") -> list[Problem]:
    """What would stop a push: no or a malformed repo id, no token, merging without an adapter.

    Checked before training so that hours of training do not end in a refused upload. The token
    is only looked for (huggingface_hub resolves HF_TOKEN or the login), never read into the config.
    `strategy` and `objective` are the registry's entries (`strategy_class`, `get_objective`), None
    when the name is unknown.
    `name` spells a field for the person reading (`hub.repo_id` in a config, `--repo-id` for a CLI).
    """
    problems: list[Problem] = []
    if not (hub.push or hub.dry_run):
        return problems
    uploads = hub.push and not hub.dry_run
    if uploads or hub.repo_id:
        problem = repo_id_problem(hub.repo_id, name("repo_id"))
        if problem:
            problems.append(problem)
    if hub.merged and strategy is not None and not strategy.saves_adapter_only:
        problems.append(Problem(name("merged"), f"strategy={strategy.name} saves a full model, there is no adapter to merge",
                                f"drop {name('merged')}"))
    elif hub.merged and objective is not None and not objective.merges:
        problems.append(Problem(name("merged"), f"objective={objective.name} does not merge its adapters",
                                f"drop {name('merged')} and publish the adapter"))
    if not hub.atol > 0:
        problems.append(Problem(name("atol"), f"{hub.atol} is not a positive tolerance", f"use {name('atol')}=1e-4"))
    if uploads:
        from huggingface_hub import get_token

        if not get_token():
            problems.append(Problem(name("push"), "no Hugging Face token found",
                                    "set HF_TOKEN or run `hf auth login`, or stage only with a dry run"))
    return problems


UNSAVED_BASE_FIX = "publish adapters of runs that start from a saved model (model.name_or_path)"


def base_is_unsaved(model: Any) -> bool:
    """A model built from a config (no name_or_path) or with fresh weights (random_init): its
    weights exist only in the run, so an adapter trained on it cannot be published."""
    return not model.name_or_path or bool(model.random_init)


def adapter_base_problems(cfg: DictConfig, strategy: Any) -> list[Problem]:
    """Publishing an adapter (hub.push or hub.dry_run) whose base has random weights that are never
    saved: refused when staging (`ptft_hf.hub.stage`), so refused here before training. A pipeline
    stage starting from an earlier stage has that stage's model/ as name_or_path: not refused."""
    hub = cfg.hub
    if not (hub.push or hub.dry_run) or strategy is None or not strategy.saves_adapter_only or not base_is_unsaved(cfg.model):
        return []
    how = "has model.random_init=true" if cfg.model.name_or_path else "is built from a config"
    return [Problem("hub.dry_run" if hub.dry_run else "hub.push",
                    f"the adapter of strategy={cfg.strategy.name} would sit on a base with random weights that is never "
                    f"saved (model={cfg.model.name} {how})", UNSAVED_BASE_FIX)]
