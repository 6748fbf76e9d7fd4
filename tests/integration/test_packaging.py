"""`pip install .` outside the checkout still finds conf/ (shipped inside the wheel as ptft_hf/conf)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "ptft_hf").rglob("__init__.py")}
    conf_groups = {f"ptft_hf.conf.{p.name}" for p in (REPO_ROOT / "conf").iterdir() if p.is_dir()}
    assert on_disk | {"ptft_hf.conf"} | conf_groups == listed


def _source_copy(folder):
    """The checkout's tracked files (or, outside git, the whole tree), copied: building writes
    build/ and *.egg-info next to the sources, which must not land in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True)
    if listed.returncode != 0:
        shutil.copytree(REPO_ROOT, folder, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "venv", ".venv"))
        return folder
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO_ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, folder / name)
    return folder


def _no_index_reason(built: subprocess.CompletedProcess) -> str | None:
    """Why the build failed, when the cause is that no package index could be reached (the
    isolated build environment installs setuptools from the index)."""
    text = built.stderr + built.stdout
    offline = ("Could not find a version that satisfies the requirement", "No matching distribution found",
               "Failed to establish a new connection", "Network is unreachable", "Temporary failure in name resolution")
    return next((f"no package index reachable to install the build requirements ({m})" for m in offline if m in text), None)


@pytest.mark.slow
def test_wheel_ships_conf_and_the_installed_cli_composes(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    source = _source_copy(tmp_path / "source")
    try:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--timeout", "30", "--retries", "1",
                                "-w", str(wheel_dir), str(source)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("no package index answered within 300 s to install the build requirements")
    if built.returncode != 0 and (reason := _no_index_reason(built)):
        pytest.skip(reason)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(wheel_dir.glob("ptft_hf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    expected = {"ptft_hf/conf/config.yaml", "ptft_hf/conf/model/tiny_gpt2.yaml",
                "ptft_hf/conf/experiment/quickstart_pretrain.yaml", "ptft_hf/conf/trainer/cpu.yaml",
                # lm-eval task files (ptft-hf-eval, eval.tasks)
                *(f"ptft_hf/evaluation/tasks/{name}" for name in (
                    "blimp.yaml", "blimp_paradigm.yaml", "banking77.yaml", "chemprot.yaml", "wikitext2.yaml", "legal.yaml",
                    "documents.py"))}
    assert expected <= set(names)
    # the quickstart's legal corpus (data=builtin_licenses): every shipped licence text and its own licence
    shipped = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "ptft_hf" / "data" / "corpora" / "licenses").iterdir())
    assert len(shipped) == 48 and "ptft_hf/data/corpora/licenses/SOURCE-LICENSE.md" in shipped
    assert sorted(n for n in names if n.startswith("ptft_hf/data/corpora/")) == shipped
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/"))]  # the harness stays out of the wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", "import ptft_hf.paths as p; print(p.conf_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == str(target / "ptft_hf" / "conf")
    job = subprocess.run(
        [sys.executable, "-m", "ptft_hf", "experiment=quickstart_pretrain", "--cfg", "job"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    assert "name: tiny_gpt2" in job.stdout and "max_steps: 400" in job.stdout
    corpus = subprocess.run(  # the installed wheel builds the legal corpus from its own files
        [sys.executable, "-c", "from ptft_hf.data.builtin import LICENSES_DIR, iter_shipped_licenses as it; "
                               "print(LICENSES_DIR, sum(1 for _ in it()))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert corpus.stdout.split() == [str(target / "ptft_hf" / "data" / "corpora" / "licenses"), "1253"]
