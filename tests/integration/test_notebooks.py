"""The three notebooks, executed top to bottom in a real Jupyter kernel with small settings
(PTFT_HF_NOTEBOOK_SMOKE=1). They are stored without outputs; a person opening them sees plots,
so each must also produce images here."""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extra (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="notebook tests need the test extra (nbformat, nbclient, ipykernel)")

pytestmark = [pytest.mark.integration, pytest.mark.notebook]

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
PNG_MAGIC = b"\x89PNG"


def test_the_three_notebooks_are_there_and_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_strategies.ipynb", "03_classification.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} is stored with outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_and_shows_plots(path, tmp_path, cache_env, monkeypatch):
    if path.stem == "03_classification" and not (SHARED_DATA / "banking77" / "train.csv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set PTFT_HF_SHARED_DATA); the Hub is offline here")
    env = {**cache_env, "PTFT_HF_NOTEBOOK_SMOKE": "1", "PTFT_HF_NOTEBOOK_RUNS": str(tmp_path / "runs"),
           "PTFT_HF_SHARED_DATA": str(SHARED_DATA), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    shutil.copy(path, workdir / path.name)
    nb = nbformat.read(workdir / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError naming the cell on any failure

    images = [base64.b64decode(out["data"]["image/png"]) for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 2, f"{path.name} showed {len(images)} plots"
    assert all(img.startswith(PNG_MAGIC) and len(img) > 5_000 for img in images)
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []
    assert os.listdir(tmp_path / "runs")  # the runs went where the notebook was told
