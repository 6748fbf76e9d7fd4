"""Where things live: the config tree (checkout or wheel) and the project's cache."""

from __future__ import annotations

import os
from pathlib import Path

from ptft_hf.config.compose import conf_dir

__all__ = ["cache_dir", "conf_dir"]


def cache_dir() -> Path:
    """Cache for derived artefacts such as builtin corpora (`PTFT_HF_CACHE` overrides it)."""
    root = os.environ.get("PTFT_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ptft_hf"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
