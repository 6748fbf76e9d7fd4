"""Where things live: the config tree (checkout or wheel) and the project's cache."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The Hydra config tree: `ptft_hf/conf` inside an installed wheel, `conf/` in a checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"ptft_hf's config tree was not found next to {_PACKAGE_DIR}")


def cache_dir() -> Path:
    """Cache for derived artefacts such as builtin corpora (`PTFT_HF_CACHE` overrides it)."""
    root = os.environ.get("PTFT_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ptft_hf"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
