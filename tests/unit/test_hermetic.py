"""The suite is hermetic: every cache the libraries resolve in a test lies under pytest's
temporary folder (set by tests/conftest.py before any test module imports them), and the session
fails when the checkout or ~/.cache/ptft_hf changed (`pytest_sessionfinish` there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import conftest


def test_every_cache_points_under_pytests_temporary_folder(tmp_path_factory):
    import datasets.config
    import huggingface_hub.constants

    from ptft_hf.paths import cache_dir

    base = tmp_path_factory.getbasetemp().resolve()
    caches = {
        "ptft_hf": cache_dir(),
        "datasets": Path(datasets.config.HF_DATASETS_CACHE),
        "datasets modules": Path(datasets.config.HF_MODULES_CACHE),
        "hub": Path(huggingface_hub.constants.HF_HUB_CACHE),
        "hub token": Path(huggingface_hub.constants.HF_TOKEN_PATH),
        "hydra outputs": Path(os.environ["PTFT_HF_OUTPUTS"]),
        "matplotlib": Path(os.environ["MPLCONFIGDIR"]),
        "trackio": Path(os.environ["TRACKIO_DIR"]),  # a run's store is tracking.dir: under the outputs folder above
        "wandb": Path(os.environ["WANDB_DIR"]),
    }
    outside = {name: str(path) for name, path in caches.items() if not path.resolve().is_relative_to(base)}
    assert outside == {}
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_the_default_run_folder_is_under_pytests_temporary_folder(tmp_path_factory, monkeypatch):
    """Hydra's default `outputs/<date>/<time>` (and `multirun/...`) follows PTFT_HF_OUTPUTS (PTFT_HF_MULTIRUN), so a
    forgotten hydra.run.dir cannot write into the checkout; without it, the usual relative folders."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # Hydra's `now` resolver, as Hydra registers it before composing

    base = tmp_path_factory.getbasetemp().resolve()
    conf = OmegaConf.load(Path(conftest.REPO_ROOT) / "conf" / "config.yaml")
    assert Path(conf.hydra.run.dir).parent.parent == Path(os.environ["PTFT_HF_OUTPUTS"])
    assert Path(conf.hydra.sweep.dir).parent.parent == Path(os.environ["PTFT_HF_MULTIRUN"])
    assert Path(conf.hydra.run.dir).resolve().is_relative_to(base) and Path(conf.hydra.sweep.dir).resolve().is_relative_to(base)
    monkeypatch.delenv("PTFT_HF_OUTPUTS")
    monkeypatch.delenv("PTFT_HF_MULTIRUN")
    assert conf.hydra.run.dir.startswith("outputs/") and conf.hydra.sweep.dir.startswith("multirun/")


def test_the_session_guard_sees_a_new_file_in_the_checkout(monkeypatch, tmp_path):
    """What pytest_sessionfinish compares: a file added to (a stand-in for) the checkout is seen."""
    monkeypatch.setattr(conftest, "REPO_ROOT", tmp_path)
    (tmp_path / "kept.txt").write_text("a")
    before = conftest._checkout_state()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "metrics.json").write_text("{}")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"")
    after = conftest._checkout_state()
    assert sorted(after.keys() - before.keys()) == ["outputs/metrics.json"]


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="only under pytest-xdist workers")
def test_xdist_workers_use_one_thread():
    import torch

    assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
