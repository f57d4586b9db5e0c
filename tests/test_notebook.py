"""Executes notebooks/train_netvlad.ipynb top to bottom on a tiny configuration, so it cannot rot."""

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_netvlad.ipynb"


@pytest.mark.slow
def test_training_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TF_NETVLAD_NB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TF_NETVLAD_NB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("TF_NETVLAD_NB_SCALE", "0.1")
    monkeypatch.setenv("TF_NETVLAD_NB_EPOCHS", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "k-means init" in outputs and "trained" in outputs and "SavedModel:" in outputs
    assert (tmp_path / "out" / "recall.png").stat().st_size > 1000
    assert (tmp_path / "out" / "retrievals.png").stat().st_size > 1000
    assert (tmp_path / "out" / "saved_model" / "1" / "saved_model.pb").exists()
    assert os.path.exists(tmp_path / "out" / "trained.keras")
