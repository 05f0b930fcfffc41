"""``python -m adnotes figures``: execute the notebooks in order, regenerating every figure.

The figures come from the notebooks themselves (one path: what a reader sees is what is saved).
Each notebook lists the figures it promises in its metadata, ``{"adnotes": {"figures": [...]}}``;
after it runs, each of them must have been written (PNG + JSON in ``figures/``) during the run.
The notebooks on disk are never modified: they are committed without outputs.

    python -m adnotes figures               # quick mode, all notebooks
    python -m adnotes figures --only 01 03  # some of them
    python -m adnotes figures --full        # the papers' settings (ADNOTES_QUICK=0), on a GPU
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import figures_dir

__all__ = ["NOTEBOOKS", "notebook_paths", "promised_figures", "execute_notebook", "execute_notebooks"]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass
class Executed:
    name: str
    seconds: float
    figures: list[str]     # promised and written during the run
    missing: list[str]     # promised but not written


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


def execute_notebook(path: Path, *, quick: bool = True, timeout: int = 1800) -> Executed:
    """Run one notebook top to bottom in a fresh kernel (cwd = its folder); raise on any error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    promised = promised_figures(path)
    previous = os.environ.get("ADNOTES_QUICK")
    os.environ["ADNOTES_QUICK"] = "1" if quick else "0"  # the kernel inherits it
    os.environ.setdefault("MPLBACKEND", "Agg")
    start, wall = time.time(), time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("ADNOTES_QUICK", None)
        else:
            os.environ["ADNOTES_QUICK"] = previous
    seconds = time.perf_counter() - wall
    written = [f for f in promised if (figures_dir() / f"{f}.png").is_file()
               and (figures_dir() / f"{f}.png").stat().st_mtime >= start - 1]
    return Executed(path.stem, seconds, written, [f for f in promised if f not in written])


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
    print(f"all figures in {figures_dir()} ({sum(r.seconds for r in done) / 60:.1f} min)")
    return done
