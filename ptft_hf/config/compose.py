"""Compose configs from the project's tree with Hydra's compose API (CLI, pipeline, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from ptft_hf.config import schema  # noqa: F401  (registers the schema with Hydra's ConfigStore)

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The Hydra config tree: `ptft_hf/conf` inside an installed wheel, `conf/` in a checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"ptft_hf's config tree was not found next to {_PACKAGE_DIR}")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for `overrides`; reuses a running Hydra app's search path when there
    is one (inside `ptft-hf`), else initialises one over conf/ for this call only."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
