"""The notebooks as a reader runs them: each executes top to bottom in quick mode and writes the
figures it promises; committed notebooks carry no outputs; the README lists them all."""
from pathlib import Path

import nbformat
import pytest

from adnotes.figures import NOTEBOOKS, execute_notebook, notebook_paths, promised_figures

PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks_and_the_readme_lists_each():
    assert PATHS, "no notebooks found"
    readme = (NOTEBOOKS / "README.md").read_text()
    for path in PATHS:
        assert path.name in readme, f"{path.name} is missing from notebooks/README.md"
    assert notebook_paths(["0"]) == [p for p in PATHS if p.name.startswith("0")]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_follows_the_layout(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), "a title cell first"
    assert "quick" in first.source.lower(), "the first cell gives the quick-mode runtime"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "QUICK" in params[0].source, "one parameter cell with the QUICK switch"
    assert any("adnotes.setup(" in c.source for c in nb.cells if c.cell_type == "code")
    assert promised_figures(path), "the notebook lists the figures it makes in metadata.adnotes.figures"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    explained = sum(nb.cells[i - 1].cell_type == "markdown" for i in code)
    assert explained >= 0.6 * len(code), "a markdown cell before each step saying what it shows and why"
    assert nb.cells[-1].cell_type == "markdown", "a short summary at the end"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode_and_writes_its_figures(path):
    result = execute_notebook(path, quick=True, timeout=900)
    assert not result.missing, f"{path.name} did not write {result.missing}"
    print(f"{path.stem}: {result.seconds:.0f} s")
