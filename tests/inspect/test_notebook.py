"""notebooks/inspect_shards.ipynb: stored clean, and runs top to bottom on the real job's output."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "inspect_shards.ipynb"


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    parameters = [cell for cell in code_cells(notebook) if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and "INSPECT_SHARD" in parameters[0].source


@pytest.mark.slow
def test_notebook_runs_headless_on_real_output(reinforced_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_SHARD", str(reinforced_run))
    monkeypatch.setenv("INSPECT_SHOW", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails
    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    # per shown sample: views and heatmaps; then norms, similarities and run stats
    assert len(pictures) == 2 * 2 + 3
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"path: {reinforced_run}" in text
    assert "teachers (config), D = 80:" in text


@pytest.mark.slow
def test_notebook_pointed_at_a_missing_path_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("INSPECT_SHARD", str(tmp_path / "nope"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    with pytest.raises(CellExecutionError, match=r"no \.tar shard at"):
        client.execute()
