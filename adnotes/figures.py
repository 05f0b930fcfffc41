"""``python -m adnotes figures``: execute the notebooks in order, regenerating every figure.

The figures come from the notebooks themselves (one path: what a reader sees is what is saved).
Each notebook lists the figures it promises in its metadata, ``{"adnotes": {"figures": [...]}}``;
after it runs, each of them must have been written (PNG + JSON in ``figures/``) during the run.
The notebooks on disk are never modified: they are committed without outputs. Each executed notebook
is also written, with its outputs, for a reader who wants them without running anything:
``figures/notebooks/<notebook>.ipynb`` (code hosts render it) and ``<notebook>.html`` (a static page
for a browser: a small stylesheet, no JavaScript but MathJax for the formulas). Plots are stored as
256-colour PNGs, so the copies stay small enough to commit.

    python -m adnotes figures               # quick mode, all notebooks
    python -m adnotes figures --only 01 03  # some of them
    python -m adnotes figures --full        # the papers' settings (ADNOTES_QUICK=0), on a GPU
"""
from __future__ import annotations

import html
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import figures_dir

__all__ = ["NOTEBOOKS", "notebook_paths", "promised_figures", "execute_notebook", "execute_notebooks", "render_html"]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass
class Executed:
    name: str
    seconds: float
    figures: list[str]     # promised and written during the run
    missing: list[str]     # promised but not written
    html: Path | None = None  # the rendered copy


def notebook_paths(only: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """The ordered notebooks ``NN_topic.ipynb`` (optionally those whose names start with ``only``)."""
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError(f"no notebooks{' matching ' + str(only) if only else ''} in {folder}")
    return paths


def promised_figures(path: Path) -> list[str]:
    import nbformat

    return list(nbformat.read(path, as_version=4).metadata.get("adnotes", {}).get("figures", []))


def execute_notebook(path: Path, *, quick: bool = True, timeout: int = 1800, html: bool = True) -> Executed:
    """Run one notebook top to bottom in a fresh kernel (cwd = its folder); raise on any error. With
    ``html``, the executed notebook is rendered to ``figures/notebooks/<name>.html``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    promised = promised_figures(path)
    # the kernel inherits these: the mode, inline plots (for the rendered copy), no progress bars in it
    kernel_env = {"ADNOTES_QUICK": "1" if quick else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                  "TQDM_DISABLE": "1"}
    previous = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    start, wall = time.time(), time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - wall
    written = [f for f in promised if (figures_dir() / f"{f}.png").is_file()
               and (figures_dir() / f"{f}.png").stat().st_mtime >= start - 1]
    page = render_html(nb, figures_dir() / "notebooks" / f"{path.stem}.html") if html else None
    return Executed(path.stem, seconds, written, [f for f in promised if f not in written], page)


_STYLE = """body { max-width: 1100px; margin: 2em auto; padding: 0 1em; font: 15px/1.5 system-ui, sans-serif; color: #222; }
.jp-InputArea, .input_area { background: #f7f7f7; border-left: 3px solid #9ab; margin: 0.8em 0; }
pre { padding: 0.5em 0.8em; overflow-x: auto; font-size: 13px; margin: 0; }
.jp-OutputArea pre, .output_text pre { background: none; border-left: 3px solid #ddd; }
.jp-RenderedHTMLCommon table, table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
img { max-width: 100%; height: auto; }
.jp-InputPrompt, .jp-OutputPrompt, .prompt { display: none; }
"""


def _small_png(data: str) -> str:
    """A base64 PNG as a base64 256-colour PNG (about a quarter of the size for plots)."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    quantized = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    quantized.save(out, "PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode() if out.tell() < len(data) * 3 // 4 else data


def _for_reading(nb):
    """A copy of an executed notebook to commit: images made small (:func:`_small_png`), widgets shown by
    their text form, no execution timestamps and this machine's adnotes home written as ``<adnotes home>``
    (a page changes only when an output does)."""
    import copy

    from .paths import home

    nb = copy.deepcopy(nb)
    here = str(home())
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if isinstance(output.get("text"), str):
                output["text"] = output["text"].replace(here, "<adnotes home>")
            data = output.get("data", {})
            for kind in ("text/plain", "text/html", "text/markdown"):
                if isinstance(data.get(kind), str):
                    data[kind] = data[kind].replace(here, "<adnotes home>")
            if "image/png" in data:
                data["image/png"] = _small_png(data["image/png"])
            data.pop("application/vnd.jupyter.widget-view+json", None)
    nb.metadata.pop("widgets", None)
    return nb


_TEX = re.compile(r"\$[^$\n]+\$|\\\(|\\\[")   # $…$, \( or \[ in a markdown cell


def render_html(nb, dest: Path) -> Path:
    """Write an executed notebook as readable copies: ``dest`` (a static HTML page: nbconvert's basic
    template, code highlighted, a small stylesheet) and, beside it, the executed ``.ipynb``, which code
    hosts render with its outputs. Both through :func:`_for_reading`."""
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    nb = _for_reading(nb)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
    title = next((c.source.lstrip("# ").splitlines()[0] for c in nb.cells if c.cell_type == "markdown"), dest.stem)
    # Our markdown writes formulas in Unicode; MathJax (from a CDN: raw TeX offline) only for a page with TeX.
    tex = any(_TEX.search(c.source) for c in nb.cells if c.cell_type == "markdown")
    mathjax = ('<script>window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}};</script>\n'
               '<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>\n') if tex else ""
    css = _STYLE + HtmlFormatter().get_style_defs(".highlight")
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest.with_suffix(".ipynb"))
    dest.write_text(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
                    f"<style>{css}</style>\n{mathjax}</head>\n<body>\n{body}\n</body></html>\n")
    return dest


def execute_notebooks(only: list[str] | None = None, *, quick: bool = True, timeout: int = 1800) -> list[Executed]:
    from tqdm.auto import tqdm

    done = []
    for path in tqdm(notebook_paths(only), desc="notebooks", unit="nb"):
        result = execute_notebook(path, quick=quick, timeout=timeout)
        print(f"{result.name}: {result.seconds:.0f} s, figures {', '.join(result.figures) or '-'}"
              + (f"; MISSING {', '.join(result.missing)}" if result.missing else ""))
        done.append(result)
    if missing := [f"{r.name}: {m}" for r in done for m in r.missing]:
        raise RuntimeError(f"promised figures not written: {'; '.join(missing)}")
    print(f"all figures in {figures_dir()}, the rendered notebooks in {figures_dir() / 'notebooks'} "
          f"({sum(r.seconds for r in done) / 60:.1f} min)")
    return done
