"""The notebooks as a reader runs them: each executes top to bottom in quick mode and writes the
figures it promises; committed notebooks carry no outputs; the README lists them all."""
import json
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
        for suffix in (".ipynb", ".html"):  # the executed copies the README links: `python -m adnotes figures`
            copy = NOTEBOOKS.parent / "figures" / "notebooks" / f"{path.stem}{suffix}"
            assert copy.is_file() and f"../figures/notebooks/{copy.name}" in readme, f"{copy} missing or not linked"
    assert notebook_paths(["0"]) == [p for p in PATHS if p.name.startswith("0")]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_follows_the_layout(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith(f"# {path.name[:2]} · "), \
        "a title cell first, numbered as the file"
    assert "quick" in first.source.lower(), "the first cell gives the quick-mode runtime"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "QUICK" in params[0].source, "one parameter cell with the QUICK switch"
    assert any("adnotes.setup(" in c.source for c in nb.cells if c.cell_type == "code")
    assert promised_figures(path), "the notebook lists the figures it makes in metadata.adnotes.figures"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    explained = sum(nb.cells[i - 1].cell_type == "markdown" for i in code)
    assert explained >= 0.6 * len(code), "a markdown cell before each step saying what it shows and why"
    assert nb.cells[-1].cell_type == "markdown", "a short summary at the end"
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and len(c.source.splitlines()) > 15]
    assert not long, f"{path.name}: code cells (index, lines) over 15 lines {long}: move the bookkeeping into the package"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode_and_writes_its_figures(path):
    result = execute_notebook(path, quick=True, timeout=900)
    assert not result.missing, f"{path.name} did not write {result.missing}"
    print(f"{path.stem}: {result.seconds:.0f} s")


@pytest.mark.notebook
def test_executed_notebooks_write_figures_outside_the_checkout_with_portable_paths(tmp_path):
    """A notebook executed by the tests (in its own kernel) saves into the tests' figure folder, not the
    versioned figures/, and its JSON records paths relative to the data folder."""
    from adnotes.paths import data_dir, figures_dir

    repo_figures = NOTEBOOKS.parent / "figures"
    before = {p.name: p.stat().st_mtime_ns for p in repo_figures.iterdir()}
    nb = nbformat.v4.new_notebook(metadata={"adnotes": {"figures": ["zz_test_figure"]}})
    nb.cells.append(nbformat.v4.new_markdown_cell("# A test page\nIt shows $g = 1$."))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfrom adnotes import plots\nfrom adnotes.paths import data_dir\n"
        "plots.save_figure(plt.figure(), 'zz_test_figure', data={'shown': [data_dir() / 'mini' / 'a.png']})\n"
        "plt.plot([0, 1], [1, 0]); plt.show(); print('printed 42 at', data_dir())"))
    path = tmp_path / "99_test.ipynb"
    nbformat.write(nb, path)
    result = execute_notebook(path, timeout=120)
    assert result.figures == ["zz_test_figure"] and not result.missing
    assert figures_dir() != repo_figures.resolve() and (figures_dir() / "zz_test_figure.png").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in repo_figures.iterdir()} == before
    page = (figures_dir() / "notebooks" / "99_test.html").read_text()   # the rendered copy, with its outputs
    assert result.html == figures_dir() / "notebooks" / "99_test.html"
    assert "<title>A test page</title>" in page and "printed 42" in page and "$g = 1$" in page
    assert "printed 42 at &lt;adnotes home&gt;/data" in page and str(data_dir()) not in page  # no machine paths
    assert page.count("data:image/png;base64,") == 1 and "<body>" in page
    executed = nbformat.read(figures_dir() / "notebooks" / "99_test.ipynb", as_version=4)  # code hosts render it
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any("printed 42" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    assert not any("execution" in c.metadata for c in executed.cells)  # no timestamps: stable diffs
    record = json.loads((figures_dir() / "zz_test_figure.json").read_text())
    assert record["data"]["shown"] == ["mini/a.png"] and str(data_dir()) not in json.dumps(record)


def test_rendered_pictures_are_small_and_look_the_same():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from adnotes.figures import _small_png

    x = np.linspace(0, 1, 300)
    picture = (255 * np.stack([np.outer(x, x), np.outer(x, 1 - x), np.outer(1 - x, x)], -1)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    small = _small_png(base64.b64encode(buffer.getvalue()).decode())
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(small))).convert("RGB")).astype(int)
    assert back.shape == picture.shape and len(small) < 0.5 * len(base64.b64encode(buffer.getvalue()))
    assert np.abs(back - picture).mean() < 4  # 256 colours of a smooth three-channel gradient


def test_a_rendered_page_loads_nothing_from_the_network_unless_it_has_tex(tmp_path):
    from adnotes.figures import render_html

    unicode_only = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t\n\ng = Σ⟨Δf, δ⟩ / Σ‖δ‖², costs 5 $")])
    page = render_html(unicode_only, tmp_path / "a.html").read_text()
    assert "<script" not in page and "g = Σ⟨Δf, δ⟩" in page
    for source in ("# t\n\n$x^2$ inline", "# t\n\n\\(x\\) inline", "# t\n\n\\[x\\] display"):
        page = render_html(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(source)]),
                           tmp_path / "b.html").read_text()
        assert "mathjax" in page, source
