"""The colabs run top to bottom (COLAB_SMOKE=1: every run shrunk to a wiring check)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

COLABS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs")


@pytest.mark.slow  # ~100 s each; CI runs -m slow after the default suite
@pytest.mark.parametrize("name", ["pipeline_tour.ipynb", "new_objective.ipynb"])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  monkeypatch.setenv("COLAB_SMOKE", "1")
  monkeypatch.setenv("COLAB_WORKDIR", str(tmp_path))
  # One simulated device: the kernel is a fresh process without the test session's flags.
  monkeypatch.setenv("XLA_FLAGS", "")
  notebook = nbformat.read(os.path.join(COLABS, name), as_version=4)
  assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), \
      "commit notebooks without outputs"
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": COLABS}}).execute()
  assert os.path.exists(os.path.join(str(tmp_path), "clm", "summary.json"))
