"""Shared fixtures: compose the real config tree once per test, shrink it, and give each test its
own run folder (after lightning-hydra-template's tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ptft_hf.config import schema  # noqa: F401  (registers the schema)
from ptft_hf.paths import conf_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PTFT_HF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Small enough to train in seconds on 2 CPU cores; big enough that the loss visibly falls.
TINY_OVERRIDES = [
    "model.config.n_layer=1",
    "model.config.n_head=2",
    "model.config.n_embd=32",
    "model.config.n_positions=64",
    "model.tokenizer.vocab_size=512",
    "objective.block_size=32",
    "trainer.max_steps=30",
    "trainer.per_device_train_batch_size=8",
    "trainer.eval_steps=15",
    "trainer.save_steps=15",
    "trainer.logging_steps=5",
    "trainer.warmup_steps=2",
    "trainer.disable_tqdm=true",
    "samples.max_new_tokens=8",
]


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set PTFT_HF_SHARED_DATA to its folder)")
    return path


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> DictConfig from the real conf/ tree (Hydra's compose API)."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory) -> dict[str, str]:
    """Environment for subprocess runs: offline, own caches, no GPU."""
    cache = tmp_path_factory.mktemp("cache")
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PTFT_HF_CACHE=str(cache / "ptft"),
        HF_DATASETS_CACHE=str(cache / "datasets"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `python -m ptft_hf` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ptft_hf", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
