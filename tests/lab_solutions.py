"""The labs' reference solutions, read from the nbgrader sources (notebooks/labs/source/<lab>/<lab>.ipynb).

Every answer cell whose metadata names a function (``"adnotes": {"solution": "<name>"}``) is
executed here, after the import statements of its notebook and in one namespace per notebook (a
later answer, such as lab 4's width sweep, calls earlier ones), so the tests check the self-checks of
``adnotes.labs`` against the very code an instructor hands out as the solution, with no second
copy to drift. The solutions are written from the papers' descriptions, independently of the
package code they are checked against: loops and explicit formulas rather than the package's
vectorised versions.
"""
import ast
from pathlib import Path

import nbformat

SOURCES = sorted((Path(__file__).resolve().parents[1] / "notebooks" / "labs" / "source").glob("*/*.ipynb"))


def _imports(nb) -> str:
    """The top-level import statements of a notebook's code cells, in order, each once."""
    lines = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:  # IPython magics
                continue
            lines += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(dict.fromkeys(lines)) + "\n"


def _load() -> dict:
    solutions = {}
    for path in SOURCES:
        nb = nbformat.read(path, as_version=4)
        namespace = {}  # one per notebook, as in its kernel: a later answer may call an earlier one
        exec(compile(_imports(nb), f"{path.name}: imports", "exec"), namespace)
        for cell in nb.cells:
            name = cell.metadata.get("adnotes", {}).get("solution")
            if name:
                exec(compile(cell.source, f"{path.name}: {name}", "exec"), namespace)
                solutions[name] = namespace[name]
    return solutions


SOLUTIONS = _load()
globals().update(SOLUTIONS)
